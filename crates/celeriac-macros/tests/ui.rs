//! Compile-time behaviour of `#[celeriac::task]`: what must compile, and the errors for
//! what must not (with `.stderr` snapshots; `TRYBUILD=overwrite` refreshes them).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
