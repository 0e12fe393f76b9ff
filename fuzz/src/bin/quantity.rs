//! AFL++ entry point for `dca_fuzz::quantity`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::quantity(data);
    });
}
