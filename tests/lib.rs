//! Nothing to export: this package holds the whole-system tests (`system/`) and the
//! `celeriac-testapp` binary the CLI tests run.
