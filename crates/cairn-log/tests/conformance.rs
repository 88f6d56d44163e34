//! The in-memory log passes the `LogStore` conformance suite.

#[test]
fn mem_log_passes_the_conformance_suite() {
    cairn_log::testing::suite(cairn_log::MemLog::new);
}
