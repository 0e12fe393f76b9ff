//! AFL++ entry point for `dca_fuzz::route`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::route(data);
    });
}
