//! The result-backend conformance suite: what every `ResultBackend` must do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::{
    ChordEnd, ChordJoin, ChordPart, ExceptionInfo, ResultBackend, State, TaskMeta,
};
use serde_json::{json, Value};

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

const DAY: Option<Duration> = Some(Duration::from_secs(86_400));

/// A task with no record reads as `None` (PENDING to clients).
pub async fn missing_record_is_none(b: Arc<dyn ResultBackend>) {
    assert!(b.get(&id()).await.unwrap().is_none());
}

/// What is stored is read back identically, field for field and in Celery's key order.
pub async fn stores_celerys_record_exactly(b: Arc<dyn ResultBackend>) {
    let mut meta = TaskMeta::failure(
        id(),
        &ExceptionInfo::new("ValueError", "builtins", "boom ☃"),
        Some("tb".into()),
    );
    meta.group_id = Some("g".into());
    meta.parent_id = Some("p".into());
    b.store(&meta, DAY).await.unwrap();
    let got = b.get(&meta.task_id).await.unwrap().expect("stored record");
    assert_eq!(got.to_json(), meta.to_json());
    let ok = TaskMeta::success(id(), json!({"nested": [1, 2.5, "x", null]}));
    b.store(&ok, DAY).await.unwrap();
    assert_eq!(b.get(&ok.task_id).await.unwrap().unwrap().result, ok.result);
}

/// A SUCCESS record is never replaced (a late duplicate cannot change a read result).
pub async fn success_is_never_overwritten(b: Arc<dyn ResultBackend>) {
    let tid = id();
    b.store(&TaskMeta::success(tid.clone(), json!(1)), DAY)
        .await
        .unwrap();
    let failure = TaskMeta::failure(tid.clone(), &ExceptionInfo::new("E", "m", "late"), None);
    b.store(&failure, DAY).await.unwrap();
    let got = b.get(&tid).await.unwrap().unwrap();
    assert_eq!((got.status, got.result), (State::Success, json!(1)));
}

/// Every other state is replaced by the next write (STARTED → RETRY → SUCCESS).
pub async fn other_states_are_overwritten(b: Arc<dyn ResultBackend>) {
    let tid = id();
    for status in [State::Started, State::Retry, State::Failure, State::Success] {
        b.store(
            &TaskMeta::new(tid.clone(), status.clone(), Value::Null),
            DAY,
        )
        .await
        .unwrap();
        assert_eq!(b.get(&tid).await.unwrap().unwrap().status, status);
    }
}

/// A waiter is woken by the store of a ready state, not by its timeout.
pub async fn wait_wakes_when_the_result_lands(b: Arc<dyn ResultBackend>) {
    let tid = id();
    let writer = {
        let (b, tid) = (b.clone(), tid.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            b.store(
                &TaskMeta::new(tid.clone(), State::Started, Value::Null),
                DAY,
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.store(&TaskMeta::success(tid, json!("done")), DAY)
                .await
                .unwrap();
        })
    };
    let t0 = Instant::now();
    let got = b
        .wait_ready(&tid, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("record");
    assert_eq!(got.status, State::Success);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "waited for the timeout, not the result"
    );
    writer.await.unwrap();
}

/// Without a ready state, the wait ends at its timeout with the latest record.
pub async fn wait_times_out_with_the_latest_record(b: Arc<dyn ResultBackend>) {
    let tid = id();
    assert!(b
        .wait_ready(&tid, Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    b.store(
        &TaskMeta::new(tid.clone(), State::Started, Value::Null),
        DAY,
    )
    .await
    .unwrap();
    let got = b
        .wait_ready(&tid, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.map(|m| m.status), Some(State::Started));
}

/// Many concurrent waiters on many tasks are all released.
pub async fn many_waiters_are_all_released(b: Arc<dyn ResultBackend>) {
    let ids: Vec<String> = (0..50).map(|_| id()).collect();
    let mut waiters = Vec::new();
    for tid in &ids {
        for _ in 0..4 {
            let (b, tid) = (b.clone(), tid.clone());
            waiters.push(tokio::spawn(async move {
                b.wait_ready(&tid, Duration::from_secs(20)).await
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (i, tid) in ids.iter().enumerate() {
        b.store(&TaskMeta::success(tid.clone(), json!(i)), DAY)
            .await
            .unwrap();
    }
    for w in waiters {
        let got = w.await.unwrap().unwrap().expect("released with a record");
        assert_eq!(got.status, State::Success);
    }
}

/// `forget` deletes the record.
pub async fn forget_deletes(b: Arc<dyn ResultBackend>) {
    let tid = id();
    b.store(&TaskMeta::success(tid.clone(), json!(1)), DAY)
        .await
        .unwrap();
    b.forget(&tid).await.unwrap();
    assert!(b.get(&tid).await.unwrap().is_none());
}

/// A record stored with an expiry is gone after it.
pub async fn records_expire(b: Arc<dyn ResultBackend>) {
    let tid = id();
    b.store(
        &TaskMeta::success(tid.clone(), json!(1)),
        Some(Duration::from_millis(1100)),
    )
    .await
    .unwrap();
    assert!(b.get(&tid).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        b.get(&tid).await.unwrap().is_none(),
        "record outlived its expiry"
    );
}

fn part(gid: &str, tid: &str, index: u64, result: Value) -> ChordPart {
    ChordPart {
        group_id: gid.to_string(),
        task_id: tid.to_string(),
        group_index: Some(index),
        state: State::Success,
        result,
    }
}

/// A chord completes exactly once, for one of many concurrent parts, with every part's
/// result in header order whatever order they finished in; a part reported twice counts
/// once; a late duplicate after the chord fired is told the chord is done.
pub async fn chord_completes_once_in_header_order(b: Arc<dyn ResultBackend>) {
    let gid = id();
    let n = 40u64;
    b.chord_start(&gid, n as usize).await.unwrap();
    let ids: Vec<String> = (0..n).map(|_| id()).collect();
    // A redelivered part before the end: counted once.
    assert_eq!(
        b.chord_part(&part(&gid, &ids[5], 5, json!(5)))
            .await
            .unwrap(),
        ChordJoin::Waiting
    );
    let mut joins = Vec::new();
    for i in (0..n).rev() {
        let (b, gid, tid) = (b.clone(), gid.clone(), ids[i as usize].clone());
        joins.push(tokio::spawn(async move {
            b.chord_part(&part(&gid, &tid, i, json!(i))).await.unwrap()
        }));
    }
    let mut complete = Vec::new();
    for j in joins {
        if let ChordJoin::Complete { parts, claim } = j.await.unwrap() {
            complete.push((parts, claim));
        }
    }
    assert_eq!(
        complete.len(),
        1,
        "the chord completed {} times",
        complete.len()
    );
    let (parts, claim) = complete.pop().unwrap();
    let results: Vec<Value> = parts.iter().map(|p| p.result.clone()).collect();
    assert_eq!(results, (0..n).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(parts[3].task_id, ids[3]);
    b.chord_finish(&gid, &claim, ChordEnd::Fired).await.unwrap();
    assert_eq!(
        b.chord_part(&part(&gid, &ids[0], 0, json!(0)))
            .await
            .unwrap(),
        ChordJoin::Done
    );
}

/// A failed part is passed on with its state; after a failed chord is finished, a late
/// duplicate part does not complete it again.
pub async fn failed_chord_is_not_completed_again(b: Arc<dyn ResultBackend>) {
    let gid = id();
    b.chord_start(&gid, 2).await.unwrap();
    let (a, f) = (id(), id());
    b.chord_part(&part(&gid, &a, 0, json!(1))).await.unwrap();
    let failed = ChordPart {
        state: State::Failure,
        result: ExceptionInfo::new("ValueError", "builtins", "boom").to_value(),
        ..part(&gid, &f, 1, Value::Null)
    };
    let ChordJoin::Complete { parts, claim } = b.chord_part(&failed).await.unwrap() else {
        panic!("the last part did not complete the chord");
    };
    assert_eq!(parts[1].state, State::Failure);
    assert_eq!(parts[1].result["exc_type"], "ValueError");
    b.chord_finish(&gid, &claim, ChordEnd::Failed)
        .await
        .unwrap();
    let again = b.chord_part(&failed).await.unwrap();
    assert!(
        !matches!(again, ChordJoin::Complete { .. }),
        "a failed chord completed again: {again:?}"
    );
}

/// A saved group's member ids can be restored by group id, and forgotten.
pub async fn groups_are_saved_and_restored(b: Arc<dyn ResultBackend>) {
    let gid = id();
    assert_eq!(b.restore_group(&gid).await.unwrap(), None);
    let members = vec![id(), id(), id()];
    b.save_group(&gid, &members).await.unwrap();
    assert_eq!(b.restore_group(&gid).await.unwrap(), Some(members));
    b.forget_group(&gid).await.unwrap();
    assert_eq!(b.restore_group(&gid).await.unwrap(), None);
}
