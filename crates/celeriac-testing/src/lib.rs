//! Test support shared by every celeriac engine: one conformance suite per trait, and
//! probes that find the test services or skip loudly.
//!
//! An engine's `tests/` passes a factory to [`broker_conformance!`] and
//! [`backend_conformance!`]; each check becomes its own `#[tokio::test]`, so a failure
//! names the behaviour that broke. Semantics change here first, and every engine follows.

pub mod backend;
pub mod broker;
pub mod disk;
pub mod proxy;
pub mod python;
pub mod services;

/// A broker under test, with a prefix that keeps its queue names apart from other tests.
pub struct BrokerUnderTest {
    /// The broker.
    pub broker: std::sync::Arc<dyn celeriac_core::Broker>,
    /// Prefix for every queue name the checks use.
    pub prefix: String,
    /// Dropped when the check ends (e.g. a [`services::RedisScope`] deleting its keys).
    pub cleanup: Option<Box<dyn std::any::Any + Send>>,
}

/// Generates one `#[tokio::test]` per broker check. `$factory` is an async fn returning
/// `Option<BrokerUnderTest>` (`None` when the service is absent and the test skips).
#[macro_export]
macro_rules! broker_conformance {
    ($factory:path) => {
        $crate::broker_conformance!(@tests $factory;
            round_trips_a_message_unchanged,
            fifo_within_a_priority,
            lower_priority_number_is_served_first,
            ack_removes_the_message,
            reject_without_requeue_drops,
            reject_with_requeue_goes_to_the_back,
            restore_goes_to_the_front_marked_redelivered,
            dropped_delivery_is_restored,
            prefetch_limits_unsettled_deliveries,
            released_prefetch_frees_a_slot,
            consumes_several_queues,
            purge_empties_and_counts,
            depth_counts_waiting_messages,
            delayed_delivery_waits_until_due,
            publish_many_publishes_in_order,
            publish_tasks_round_trips_task_messages,
            unroutable_publishes_are_refused_and_handed_back,
            closed_consumer_returns_fetched_messages,
            idle_consumer_wakes_for_a_new_message,
            fanout_reaches_every_subscriber,
            topic_exchanges_route_by_pattern,
        );
    };
    (@tests $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(b) = $factory().await {
                    $crate::broker::$check(b).await;
                }
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per result-backend check. `$factory` is an async fn
/// returning `Option<(Arc<dyn ResultBackend>, Option<Box<dyn Any + Send>>)>`: the backend
/// and a cleanup guard dropped when the check ends.
#[macro_export]
macro_rules! backend_conformance {
    ($factory:path) => {
        $crate::backend_conformance!(@tests $factory;
            missing_record_is_none,
            stores_celerys_record_exactly,
            success_is_never_overwritten,
            other_states_are_overwritten,
            wait_wakes_when_the_result_lands,
            wait_times_out_with_the_latest_record,
            many_waiters_are_all_released,
            forget_deletes,
            records_expire,
            chord_completes_once_in_header_order,
            failed_chord_is_not_completed_again,
            groups_are_saved_and_restored,
        );
    };
    (@tests $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some((b, _cleanup)) = $factory().await {
                    $crate::backend::$check(b).await;
                }
            }
        )*
    };
}
