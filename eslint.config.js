// Lint: typescript-eslint's recommended rules (syntax-level, no type information, so the whole tree
// lints in seconds), with formatting left to Prettier (eslint-config-prettier turns the clashing
// rules off). `npm run lint` runs both; `npm test` runs it first.
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/', 'cdk.out/', 'bench/results/', 'data/', '**/*.d.ts'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: {
        process: 'readonly',
        console: 'readonly',
        Buffer: 'readonly',
        URL: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        setImmediate: 'readonly',
        queueMicrotask: 'readonly',
      },
    },
    rules: {
      // `_name` marks a parameter a signature needs but the body does not use.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Protocol parsers must find NUL, CR, LF and other control characters in what clients send
      // (RFC 5321 4.1.2, RFC 1939); a regular expression is the clearest way to say which.
      'no-control-regex': 'off',
    },
  },
  prettier,
);
