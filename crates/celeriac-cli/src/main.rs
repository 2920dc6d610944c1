//! `celeriac`: everything that needs no task code — `call` tasks by name (one, or many
//! from a JSON-lines file), `result`, `purge`, `inspect queues`, `status` — against the
//! embedded SQLite default, Redis (Python Celery's too) or any other configured broker.
//!
//! All of it lives in `celeriac::cli`; this binary is only the entry point, as a user's
//! own binary gets the same commands (and `worker`) from `celeriac::cli::run(app)`.

fn main() {
    celeriac::cli::run_tool()
}
