import { render } from 'preact';

render(<p>Tomlinson</p>, document.getElementById('app')!);
