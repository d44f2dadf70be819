import { describeFolderStore } from './folders-suite.js';

describeFolderStore('local');
