//! The startup banner, laid out as Celery's so operators recognise it.

use super::Worker;

pub(super) fn render(w: &Worker) -> String {
    let app = &w.app;
    let queues: String = w
        .queues
        .iter()
        .map(|q| format!("                .> {q:<16} exchange={q}(direct) key={q}\n"))
        .collect();
    let tasks: String = app
        .task_names()
        .iter()
        // Celery's banner leaves out its built-in `celery.*` tasks too.
        .filter(|t| !t.starts_with("celery."))
        .map(|t| format!("  . {t}\n"))
        .collect();
    let left = [
        " -------------- ",
        "--- ***** ----- ",
        "-- ******* ---- ",
        "- *** --- * --- ",
        "- ** ---------- ",
        "- ** ---------- ",
        "- ** ---------- ",
        "- ** ---------- ",
        "- *** --- * --- ",
        "-- ******* ---- ",
        "--- ***** ----- ",
        " -------------- ",
    ];
    let right = [
        format!("{} v{} (celeriac)", w.name, env!("CARGO_PKG_VERSION")),
        String::new(),
        format!(
            "{} {} {}",
            std::env::consts::OS,
            std::env::consts::ARCH,
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
        ),
        String::new(),
        "[config]".to_string(),
        format!(".> transport:   {}", app.broker_url()),
        format!(".> results:     {}", app.backend_url()),
        match w.autoscale {
            Some(a) => format!(
                ".> concurrency: {}..{} ({}, autoscale)",
                a.min, a.max, w.pool
            ),
            None => format!(".> concurrency: {} ({})", w.concurrency, w.pool),
        },
        format!(".> prefetch:    {}", w.prefetch),
        format!(
            ".> task events: {}",
            if w.task_events {
                "ON"
            } else {
                "OFF (enable -E to monitor tasks in this worker)"
            }
        ),
        String::new(),
        "[queues]".to_string(),
    ];
    let mut out = String::new();
    for (l, r) in left.iter().zip(right.iter()) {
        out.push_str(l);
        out.push_str(r);
        out.push('\n');
    }
    out.push_str(&queues);
    out.push_str("\n[tasks]\n");
    out.push_str(&tasks);
    out
}
