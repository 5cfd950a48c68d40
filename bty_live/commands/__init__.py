"""One module per `bty` subcommand. Each exposes `register(subparsers)`; the parser it adds
sets `func=run`, a function taking the parsed args and returning an exit code."""
