//! AFL++ entry point for `dca_fuzz::config`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::config(data);
    });
}
