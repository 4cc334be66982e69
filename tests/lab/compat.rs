//! ambit against the recorded observation of real ztunnel (`tests/data/compat/ztunnel.json`,
//! made by `ambit-lab compat --peer <ztunnel> --record ...`): the same topology, control plane and
//! traffic, compared on what tools and operators read. Fails on any difference that
//! `ambit_lab::compat::DELIBERATE` does not list with its reason, so ambit cannot drift from the
//! peer unnoticed; and on a deliberate entry that no longer matches anything, so the list cannot
//! go stale and hide a later drift.

use ambit_lab::compat;

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambit_reads_like_the_recorded_ztunnel() {
    let rec = compat::load(&compat::recording_path()).expect("the committed recording");
    let mine = compat::observe_binary(std::path::Path::new(AMBIT))
        .await
        .expect("the harness runs on ambit");
    let diffs = compat::diff(&mine, &rec.observation);
    let unexplained = diffs.iter().filter(|d| d.deliberate().is_none()).count();
    assert_eq!(unexplained, 0, "{}", compat::report(&rec.peer, &diffs));
    for (category, prefix, why) in compat::DELIBERATE {
        assert!(
            diffs
                .iter()
                .any(|d| d.category == *category && d.item.starts_with(prefix)),
            "deliberate difference {category}/{prefix} ({why}) is no longer observed: remove it"
        );
    }
}
