"""One module per `moed` subcommand; see moed.daemon.cli."""
