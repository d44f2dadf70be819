"""moto's server (`python3 -m moto.server`) with its check-then-write races closed.

moto runs one thread per request and checks conditions (S3 If-None-Match, DynamoDB condition
expressions, SQS message visibility) before it writes, without a lock, so two racing requests
can both pass. S3, DynamoDB and SQS decide such races atomically, and the storage contract tests
them (exactly one winner, each message to one receiver). This wrapper serialises those calls per
service; an SQS long poll waits outside the lock. Arguments are moto.server's (-H, -p).
"""
import threading
import time

from moto.dynamodb.responses import DynamoHandler
from moto.s3.responses import S3Response
from moto.sqs.models import SQSBackend


def _serialise(cls, names, lock):
    for name in names:
        def locked(self, *args, _orig=getattr(cls, name), **kwargs):
            with lock:
                return _orig(self, *args, **kwargs)
        setattr(cls, name, locked)


_serialise(S3Response, ("put_object", "_key_response_post"), threading.RLock())
# Whole DynamoDB requests, serialisation of the answer included: UpdateItem's ALL_NEW answer
# otherwise reads the live item after a racing update has changed it again.
_serialise(DynamoHandler, ("call_action",), threading.RLock())

_sqs_lock = threading.RLock()
_receive = SQSBackend.receive_message


def _receive_atomically(self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names=None):
    deadline = time.time() + (wait_seconds_timeout or 0)
    while True:
        with _sqs_lock:
            got = _receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        if got or time.time() >= deadline:
            return got
        # Wakes on a send to the queue, or after at most 1 s (delays and visibility expiring).
        self.get_queue(queue_name).wait_for_messages(min(1, max(0.05, deadline - time.time())))
        time.sleep(0.01)


SQSBackend.receive_message = _receive_atomically
_serialise(SQSBackend, ("delete_message", "change_message_visibility", "send_message"), _sqs_lock)

def _exit_with_parent():
    """The harness keeps our stdin open; when it closes, the test process is gone: stop too."""
    import os
    import sys

    while sys.stdin.buffer.read1(4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    import os

    import moto
    from moto.server import main

    if os.environ.get("TOMLINSON_MOTO_EXIT_WITH_STDIN") == "1":
        threading.Thread(target=_exit_with_parent, daemon=True).start()
    print(f"moto {moto.__version__}", flush=True)
    main()
