//! Compile tests of the `#[propetl]` attribute: every valid form compiles, every invalid one
//! fails with the snapshotted, spanned message (`tests/ui/fail/*.stderr`, rustc 1.95).
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
