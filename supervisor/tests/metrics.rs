//! With the `metrics` feature, each handoff is counted and timed under the
//! reference's metric names.
#![cfg(feature = "metrics")]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Every value recorded, by metric name.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, f64)>>>);

impl Seen {
    fn values(&self, name: &str) -> Vec<f64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    }
}

struct Handle {
    name: String,
    seen: Seen,
}

impl Handle {
    fn push(&self, v: f64) {
        self.seen.0.lock().unwrap().push((self.name.clone(), v));
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.push(value);
    }
    fn decrement(&self, value: f64) {
        self.push(-value);
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

struct TestRecorder(Seen);

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            name: key.name().to_owned(),
            seen: self.0.clone(),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

#[test]
fn each_handoff_is_counted_and_timed() {
    let layout = Layout::new("metrics");
    let failing = layout.failing_successor();
    let service = start_service(
        &layout,
        &format!("allowed_binaries = [\"{}\"]", failing.display()),
    );
    let seen = Seen::default();
    let recorder = TestRecorder(seen.clone());

    // A committed handoff: counted, and every phase timed.
    let report = metrics::with_local_recorder(&recorder, || service.handoff(None)).unwrap();
    assert!(report.committed);
    assert_eq!(seen.values("handoff_handoffs_total"), [1.0]);
    assert!(seen.values("handoff_failures_total").is_empty());
    for histogram in [
        "handoff_duration_seconds",
        "handoff_drain_seconds",
        "handoff_seal_seconds",
        "handoff_begin_to_ready_seconds",
    ] {
        let v = seen.values(histogram);
        assert!(v.len() == 1 && v[0] >= 0.0, "{histogram}: {v:?}");
    }
    let total = seen.values("handoff_duration_seconds")[0];
    assert!((total * 1e3 - report.duration_ms).abs() < 1e-6);

    // An aborted one: a failure, not a seal failure; no drain was reached.
    let report =
        metrics::with_local_recorder(&recorder, || service.handoff(Some(&failing))).unwrap();
    assert!(!report.committed);
    assert_eq!(seen.values("handoff_handoffs_total"), [1.0, 1.0]);
    assert_eq!(seen.values("handoff_failures_total"), [1.0]);
    assert!(seen.values("handoff_seal_failures_total").is_empty());
    assert_eq!(seen.values("handoff_duration_seconds").len(), 2);
    assert_eq!(seen.values("handoff_drain_seconds").len(), 1);
}
