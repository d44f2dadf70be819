"""Runs getmail6 (/usr/bin/getmail, arguments passed on) with its delivery-child race closed.

getmail forks a child for each Maildir delivery and waits for it on a Condition that its SIGCHLD
handler notifies; the handler is installed after fork() and the notify can come before the wait,
so a child that exits quickly is missed and getmail waits out its timeout with the message
delivered (test/pop3/clients.test.ts dropped getmail for this). Here the parent just waits for
the child with waitpid: no signal, no race; getmail's own code does the rest. Run with the
python getmail is installed for (/usr/bin/python3, Debian's getmail6 package).
"""
import os
import runpy
import sys

from getmailcore.baseclasses import ForkingBase
from getmailcore.exceptions import getmailOperationError


def prepare_child(self):
    pass


def wait_for_child(self, childpid):
    _, status = os.waitpid(childpid, 0)
    if os.WIFSIGNALED(status):
        raise getmailOperationError("child pid %d killed by signal %d" % (childpid, os.WTERMSIG(status)))
    return os.waitstatus_to_exitcode(status)


ForkingBase._prepare_child = prepare_child
ForkingBase._wait_for_child = wait_for_child
sys.argv[0] = "getmail"
runpy.run_path("/usr/bin/getmail", run_name="__main__")
