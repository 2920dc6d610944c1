//! Whole-system tests: one test binary for the workspace (fast to link), one module per area.

mod amqp_engine;
mod beat;
mod canvas;
mod cli;
mod conformance;
mod control;
mod diskfull;
mod eager;
mod events;
mod failover;
mod hostile;
mod interop;
mod interop_amqp;
mod monitoring;
mod pools;
mod prefork;
mod proc;
mod redis_engine;
mod routing;
mod sentinel;
mod shutdown;
mod sqlite_engine;
mod support;
mod worker;
