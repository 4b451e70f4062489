"""ftctl: the FineTuneJob client. One module per command, each thin over the library."""
