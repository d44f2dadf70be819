import { describeMailboxStore } from './store-suite.js';

describeMailboxStore('aws');
