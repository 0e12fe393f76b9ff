//! AFL++ entry point for `dca_fuzz::quantity_f64`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        dca_fuzz::quantity_f64(data);
    });
}
