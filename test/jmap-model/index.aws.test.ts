import { describeEmailIndex } from './index-suite.js';

describeEmailIndex('aws');
