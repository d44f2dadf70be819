import { describeSweep } from './sweep-suite.js';

describeSweep('local');
