import { describeEmailIndex } from './index-suite.js';

describeEmailIndex('local');
