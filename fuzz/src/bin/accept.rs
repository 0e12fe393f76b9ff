//! AFL++ entry point for `dca_fuzz::accept`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::accept(data);
    });
}
