"""The `vault-bridge` command (click): parsing, rendering and the one error boundary."""
