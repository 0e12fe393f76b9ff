//! AFL++ entry point for `dca_fuzz::dd_response`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::dd_response(data);
    });
}
