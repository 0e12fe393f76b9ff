//! AFL++ entry point for `dca_fuzz::selector`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::selector(data);
    });
}
