//! Broker and backend URL text → `EngineUrl::parse` and the password masking every error
//! and log line uses; with `--features engines`, also the Redis and SQLite engines' URL
//! readers. (`memory://` is left out: each name it is given makes a process-wide instance
//! that is never freed.)
#![no_main]

use celeriac_core::url::{mask, EngineUrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = mask(text);
    #[cfg(feature = "engines")]
    let _ = celeriac_sqlite::SqliteConfig::from_url(text);
    let Ok(url) = EngineUrl::parse(text) else {
        return;
    };
    let _ = (url.masked(), url.host(), url.path(), url.query_pairs());
    #[cfg(feature = "engines")]
    if url.engine() == celeriac_core::url::Engine::Redis {
        let _ = celeriac_redis::RedisConfig::from_url(&url);
    }
});
