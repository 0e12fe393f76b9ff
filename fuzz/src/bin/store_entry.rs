//! AFL++ entry point for `dca_fuzz::store_entry`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::store_entry(data);
    });
}
