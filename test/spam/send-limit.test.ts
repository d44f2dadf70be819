import { describeSendLimit } from './send-limit-suite.js';

describeSendLimit('local');
