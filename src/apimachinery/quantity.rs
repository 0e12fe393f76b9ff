//! Kubernetes `resource.Quantity` (`k8s.io/apimachinery/pkg/api/resource`).
//!
//! A from-scratch implementation of apimachinery's parsing and canonical
//! formatting (contract §3.3), using exact decimal arithmetic on digit vectors
//! (no floating point anywhere on the parse → canonical path).
//!
//! * **Parsing** accepts `<signedNumber><suffix>` with the binary suffixes
//!   `Ki Mi Gi Ti Pi Ei`, the decimal suffixes `n u m "" k M G T P E`, or an
//!   exponent `e<signed>` / `E<signed>`. The value is kept exactly, then rounded
//!   up (away from zero) to nano precision. BinarySI magnitudes are capped at
//!   2^63−1, and a BinarySI value strictly between 0 and 1 becomes DecimalSI.
//! * **Formatting** (`Display`, `to_canonical_string`, serde) is
//!   `CanonicalizeBytes`: integer mantissa, exponent lowered to a multiple of 3,
//!   largest suffix possible. Unlike apimachinery, a DecimalSI value whose
//!   exponent is beyond `E` (10^18) is written in exponent form (`1000E` →
//!   `1e21`, as in kubernetes/kubernetes#140459) instead of losing its magnitude.
//!
//! Deliberate differences from Go, all on inputs Go mishandles:
//! * exponents are never truncated to 32 bits; a value whose normalised decimal
//!   exponent exceeds `i32::MAX` is rejected instead of wrapping;
//! * [`Quantity::milli_value`] / [`Quantity::value`] return `None` on `i64`
//!   overflow instead of wrapping, and always round away from zero (Go does so
//!   for the int64-backed values its parser produces from canonical strings,
//!   but is inconsistent for negative values held as `inf.Dec`).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Values are rounded up (away from zero) to 10^-9.
const NANO_EXPONENT: i128 = -9;
/// Largest decimal exponent (of the normalised value) we accept.
const MAX_EXPONENT: i128 = i32::MAX as i128;
/// 2^63 − 1, the BinarySI cap, as decimal digits.
const MAX_BINARY_DIGITS: [u8; 19] = [9, 2, 2, 3, 3, 7, 2, 0, 3, 6, 8, 5, 4, 7, 7, 5, 8, 0, 7];
const ONE_DIGITS: [u8; 1] = [1];
const KI_DIGITS: [u8; 4] = [1, 0, 2, 4];
/// Binary suffixes indexed by the power of 1024.
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
/// Characters Go's scanner accepts at the start of a suffix.
const SUFFIX_CHARS: &[u8] = b"eEinumkKMGTP";

/// Errors from parsing or converting a quantity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty or not shaped like a quantity (Go's `ErrFormatWrong`).
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    FormatWrong,
    /// The numeric part could not be parsed (Go's `ErrNumeric`).
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// The suffix is not a known unit or exponent (Go's `ErrSuffix`).
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The value's decimal exponent is too large to represent.
    #[error("quantity is too large: its decimal exponent exceeds {}", i32::MAX)]
    ExponentOutOfRange,
    /// NaN or ±infinity cannot be represented.
    #[error("cannot represent non-finite value {value} as a quantity")]
    NonFinite {
        /// The rejected value.
        value: f64,
    },
    /// The value's milli-value (`ceil(v × 1000)`) does not fit in an `i64`.
    #[error("value {value} is out of range: its milli-value does not fit in a 64-bit integer")]
    OutOfRange {
        /// The rejected value.
        value: f64,
    },
}

/// How a quantity is written; remembered from the suffix it was parsed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// `12e6`
    DecimalExponent,
    /// `12Mi` (12 × 2^20)
    BinarySI,
    /// `12M` (12 × 10^6)
    #[default]
    DecimalSI,
}

impl Format {
    /// Go's name for the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::DecimalExponent => "DecimalExponent",
            Format::BinarySI => "BinarySI",
            Format::DecimalSI => "DecimalSI",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exact decimal quantity with nano precision and a remembered [`Format`].
///
/// Equality, ordering and hashing compare the numeric value only (like Go's
/// `Quantity.Cmp`/`Equal`); the format is ignored.
#[derive(Debug, Clone)]
pub struct Quantity {
    negative: bool,
    /// Significant decimal digits (each 0..=9), without leading or trailing
    /// zeros. Empty means zero.
    digits: Vec<u8>,
    /// value = ±digits × 10^exponent. `0` for zero, otherwise >= -9.
    exponent: i64,
    format: Format,
}

impl Default for Quantity {
    fn default() -> Self {
        Quantity::zero()
    }
}

impl Quantity {
    /// Zero, in DecimalSI format.
    pub fn zero() -> Self {
        Quantity::zero_with_format(Format::DecimalSI)
    }

    fn zero_with_format(format: Format) -> Self {
        Quantity {
            negative: false,
            digits: Vec::new(),
            exponent: 0,
            format,
        }
    }

    /// Parses a quantity string exactly like Go's `resource.ParseQuantity`; see [`parse`].
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        parse(s)
    }

    /// Converts a float into a DecimalSI quantity; see [`from_f64`].
    pub fn from_f64(v: f64) -> Result<Self, QuantityError> {
        from_f64(v)
    }

    /// `value` units (Go's `NewQuantity`). BinarySI magnitudes are capped at 2^63−1.
    pub fn from_i64(value: i64, format: Format) -> Self {
        Quantity::from_scaled_i64(value, 0, format)
    }

    /// `value` thousandths (Go's `NewMilliQuantity`).
    pub fn from_milli(value: i64, format: Format) -> Self {
        Quantity::from_scaled_i64(value, -3, format)
    }

    fn from_scaled_i64(value: i64, exponent: i128, format: Format) -> Self {
        let digits = value
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        // An i64 with exponent 0 or -3 is always in range.
        build(value < 0, digits, exponent, format)
            .unwrap_or_else(|_| Quantity::zero_with_format(format))
    }

    /// The remembered format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Changes the format used when writing the quantity (Go's exported `Format` field).
    pub fn set_format(&mut self, format: Format) {
        self.format = format;
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// −1, 0 or 1 (Go's `Sign`).
    pub fn signum(&self) -> i32 {
        if self.digits.is_empty() {
            0
        } else if self.negative {
            -1
        } else {
            1
        }
    }

    /// The value in units, rounded away from zero (Go's `Value`), or `None` if it
    /// does not fit in an `i64`.
    pub fn value(&self) -> Option<i64> {
        self.scaled_value(0)
    }

    /// The value in thousandths, rounded away from zero — `ceil(q × 1000)` for
    /// non-negative values, which is what the HPA reads through Go's
    /// `MilliValue` — or `None` if it does not fit in an `i64` (Go would wrap).
    pub fn milli_value(&self) -> Option<i64> {
        self.scaled_value(-3)
    }

    /// `value / 10^scale`, rounded away from zero, checked.
    fn scaled_value(&self, scale: i128) -> Option<i64> {
        if self.digits.is_empty() {
            return Some(0);
        }
        let e = i128::from(self.exponent) - scale;
        let len = self.digits.len() as i128;
        if len + e > 19 {
            return None; // at least 10^19
        }
        let magnitude: u128 = if e >= 0 {
            let int = digits_to_u128(&self.digits)?;
            int.checked_mul(10u128.checked_pow(u32::try_from(e).ok()?)?)?
        } else {
            // Drop -e fractional digits; they are non-zero (no trailing zeros), so round up.
            let keep = usize::try_from((len + e).max(0)).ok()?;
            digits_to_u128(self.digits.get(..keep)?)?.checked_add(1)?
        };
        if self.negative {
            let m = i128::try_from(magnitude).ok()?;
            i64::try_from(-m).ok()
        } else {
            i64::try_from(magnitude).ok()
        }
    }

    /// The canonical string (Go's `String()` / `CanonicalizeBytes`, with the
    /// DecimalSI > 10^18 fix).
    pub fn to_canonical_string(&self) -> String {
        if self.digits.is_empty() {
            return String::from("0");
        }
        let mut out = String::with_capacity(self.digits.len() + 8);
        if self.negative {
            out.push('-');
        }
        let mut format = self.format;
        if format == Format::BinarySI {
            let small =
                cmp_magnitude(&self.digits, self.exponent.into(), &KI_DIGITS, 0) == Ordering::Less;
            let integer = if small || self.exponent < 0 {
                None
            } else {
                self.abs_u64()
            };
            match integer {
                Some(mut mantissa) => {
                    let mut power = 0usize;
                    while mantissa >= 1024 && mantissa % 1024 == 0 {
                        mantissa /= 1024;
                        power += 1;
                    }
                    if let Some(suffix) = BINARY_SUFFIXES.get(power) {
                        out.push_str(&mantissa.to_string());
                        out.push_str(suffix);
                        return out;
                    }
                    // Unreachable under the 2^63−1 cap; fall back to decimal.
                    format = Format::DecimalSI;
                }
                // |v| < 1024, or fractional: shown as DecimalSI so no precision is lost.
                None => format = Format::DecimalSI,
            }
        }

        // Lower the exponent to a multiple of 3, moving zeros into the mantissa.
        let pad = self.exponent.rem_euclid(3);
        let exponent = self.exponent - pad;
        out.extend(self.digits.iter().map(|d| char::from(b'0' + d)));
        for _ in 0..pad {
            out.push('0');
        }
        let suffix = match format {
            Format::DecimalSI => decimal_si_suffix(exponent),
            _ => None,
        };
        match suffix {
            Some(s) => out.push_str(s),
            None if exponent == 0 => {}
            None => {
                out.push('e');
                out.push_str(&exponent.to_string());
            }
        }
        out
    }

    /// The magnitude as a `u64` when it is an integer that fits.
    fn abs_u64(&self) -> Option<u64> {
        if self.exponent < 0 {
            return None;
        }
        let int = digits_to_u128(&self.digits)?;
        let scaled = int.checked_mul(10u128.checked_pow(u32::try_from(self.exponent).ok()?)?)?;
        u64::try_from(scaled).ok()
    }
}

/// Parses a quantity string with the semantics of Go's `resource.ParseQuantity`.
///
/// Go quirks kept for compatibility: a number part without digits is zero
/// (`"+"`, `"-"`, `"."`, `"k"`, `"Mi"` all parse as zero), except with an
/// exponent below −9 or the `Pi`/`Ei` suffixes (`".e-10"` and `"Pi"` are
/// `Numeric`, as in Go); leading and trailing whitespace is rejected.
pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
    let b = s.as_bytes();
    let mut pos = 0;
    let negative = match b.first() {
        None => return Err(QuantityError::FormatWrong),
        Some(b'-') => {
            pos = 1;
            true
        }
        Some(b'+') => {
            pos = 1;
            false
        }
        Some(_) => false,
    };

    let int_start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &b[int_start..pos];
    let mut frac_digits: &[u8] = &[];
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &b[frac_start..pos];
    }
    let has_digit = !int_digits.is_empty() || !frac_digits.is_empty();

    let suffix_start = pos;
    while pos < b.len() && SUFFIX_CHARS.contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() {
        if matches!(b[pos], b'+' | b'-') {
            pos += 1;
        }
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos < b.len() {
            return Err(QuantityError::FormatWrong);
        }
    }
    // Only ASCII bytes were skipped, so `suffix_start` is on a char boundary.
    let (binary, exponent, format) =
        interpret_suffix(&s[suffix_start..]).ok_or(QuantityError::Suffix)?;

    // Go parses small inputs with int64 arithmetic and falls back to inf.Dec,
    // which rejects a number part without digits. Without digits Go takes that
    // fallback for exponents below nano and for the `Pi`/`Ei` suffixes.
    let slow_path = match format {
        Format::DecimalExponent => exponent < -9,
        Format::BinarySI => exponent >= 50,
        Format::DecimalSI => false,
    };
    if !has_digit && slow_path {
        return Err(QuantityError::Numeric);
    }

    let mut digits: Vec<u8> = int_digits
        .iter()
        .chain(frac_digits)
        .map(|d| d - b'0')
        .collect();
    let mut decimal_exponent = -(frac_digits.len() as i128);
    if binary {
        strip_leading_zeros(&mut digits);
        for _ in 0..exponent / 10 {
            mul_small(&mut digits, 1024);
        }
    } else {
        decimal_exponent += i128::from(exponent);
    }
    build(negative, digits, decimal_exponent, format)
}

/// Converts a float (e.g. a Datadog metric value) into a DecimalSI quantity.
///
/// The exact decimal value of the float's shortest round-trip representation is
/// used — the digits Go's `fmt.Sprintf("%v", v)` prints, ties included, so `0.1`
/// is `100m`, not its binary expansion — rounded up (away from zero) to nano
/// precision: `1e-10` → `1n`, `0.1 + 0.2` → `300000001n`. The format is always
/// DecimalSI (Go's `%v` switches to exponent notation below 1e-4, which would
/// make `ParseQuantity` pick DecimalExponent; the value is the same).
///
/// Errors: NaN and ±∞ ([`QuantityError::NonFinite`]); values whose milli-value
/// does not fit in an `i64` ([`QuantityError::OutOfRange`]), so nothing is ever
/// wrapped or silently clamped.
pub fn from_f64(v: f64) -> Result<Quantity, QuantityError> {
    if !v.is_finite() {
        return Err(QuantityError::NonFinite { value: v });
    }
    let q = decimal_from_f64(v)?;
    if q.milli_value().is_none() {
        return Err(QuantityError::OutOfRange { value: v });
    }
    Ok(q)
}

/// The shortest round-trip decimal of a finite float, as a DecimalSI quantity.
fn decimal_from_f64(v: f64) -> Result<Quantity, QuantityError> {
    if v == 0.0 {
        return Ok(Quantity::zero());
    }
    let (digits, exponent) = shortest_decimal(v.abs()).ok_or(QuantityError::Numeric)?;
    let digits = digits.to_string().bytes().map(|b| b - b'0').collect();
    build(v < 0.0, digits, exponent, Format::DecimalSI)
}

/// The shortest decimal `digits × 10^exponent` that reads back as `v` (finite,
/// positive), choosing like Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the
/// closest such decimal, and on an exact tie between two, the even one.
fn shortest_decimal(v: f64) -> Option<(u64, i128)> {
    // `{:e}` prints the shortest round-trip digits, `d[.ddd]e[-]n`; Rust breaks
    // exact ties upwards, Go to even, which is fixed below.
    let text = format!("{v:e}");
    let (mantissa, exp) = text.split_once('e')?;
    let exp: i128 = exp.parse().ok()?;
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: u64 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        digits = digits.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    let exponent = exp - frac_part.len() as i128;

    // On an exact tie (the float is halfway between two shortest candidates)
    // Go keeps the even candidate.
    if digits % 2 == 1
        && let Some((exact, exact_exp)) = exact_decimal(v)
        && exact_exp == exponent - 1
        && exact % 10 == 5
    {
        let lower = exact / 10;
        let other = if u128::from(digits) == lower {
            lower + 1
        } else {
            lower
        };
        if let Ok(other) = u64::try_from(other)
            && format!("{other}e{exponent}").parse::<f64>() == Ok(v)
        {
            return Some((other, exponent));
        }
    }
    Some((digits, exponent))
}

/// The exact decimal expansion `digits × 10^exponent` of a finite positive
/// float when it has at most 38 digits (otherwise no tie is possible at the
/// at most 17 digits a shortest representation has).
fn exact_decimal(v: f64) -> Option<(u128, i128)> {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mut mantissa, mut exp2) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased - 1075)
    };
    if mantissa == 0 {
        return None;
    }
    let zeros = mantissa.trailing_zeros();
    mantissa >>= zeros;
    exp2 += zeros as i32;
    if exp2 >= 0 {
        // mantissa < 2^53, so this fits in a u128 up to 2^74.
        if exp2 > 74 {
            return None;
        }
        let mut x = u128::from(mantissa) << exp2;
        let mut e = 0i128;
        while x % 10 == 0 {
            x /= 10;
            e += 1;
        }
        Some((x, e))
    } else {
        // m × 2^-j = m × 5^j × 10^-j; 5^27 × 2^53 < 2^128.
        let j = exp2.unsigned_abs();
        if j > 27 {
            return None;
        }
        Some((u128::from(mantissa) * 5u128.pow(j), -i128::from(j)))
    }
}

/// Normalises ±digits × 10^exponent: strips zeros, rounds up (away from zero)
/// to nano precision, applies the BinarySI cap and < 1 rule, checks the range.
fn build(
    negative: bool,
    mut digits: Vec<u8>,
    exponent: i128,
    format: Format,
) -> Result<Quantity, QuantityError> {
    strip_leading_zeros(&mut digits);
    let mut exponent = exponent + strip_trailing_zeros(&mut digits);
    if digits.is_empty() {
        return Ok(Quantity::zero_with_format(format));
    }

    if exponent < NANO_EXPONENT {
        let drop = NANO_EXPONENT - exponent;
        match usize::try_from(drop) {
            Ok(drop) if drop < digits.len() => {
                digits.truncate(digits.len() - drop);
                increment(&mut digits);
            }
            // Every significant digit is below 1n: the value rounds up to 1n.
            _ => digits = vec![1],
        }
        exponent = NANO_EXPONENT + strip_trailing_zeros(&mut digits);
    }

    let mut format = format;
    if format == Format::BinarySI {
        if cmp_magnitude(&digits, exponent, &MAX_BINARY_DIGITS, 0) == Ordering::Greater {
            digits = MAX_BINARY_DIGITS.to_vec();
            exponent = 0;
        }
        if cmp_magnitude(&digits, exponent, &ONE_DIGITS, 0) == Ordering::Less {
            format = Format::DecimalSI;
        }
    }

    if exponent > MAX_EXPONENT {
        return Err(QuantityError::ExponentOutOfRange);
    }
    let exponent = i64::try_from(exponent).map_err(|_| QuantityError::ExponentOutOfRange)?;
    Ok(Quantity {
        negative,
        digits,
        exponent,
        format,
    })
}

/// Suffix → (is binary, exponent, format). Decimal exponents are powers of 10,
/// binary ones powers of 2.
fn interpret_suffix(suffix: &str) -> Option<(bool, i64, Format)> {
    let decimal = |e| Some((false, e, Format::DecimalSI));
    let binary = |e| Some((true, e, Format::BinarySI));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            if rest.is_empty() {
                return None;
            }
            parse_go_int(rest).map(|e| (false, e, Format::DecimalExponent))
        }
    }
}

fn decimal_si_suffix(exponent: i64) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

/// Go's `strconv.ParseInt(s, 10, 64)`: optional sign, at least one ASCII digit, no
/// underscores, must fit in an `i64`. Also the selector's reading of `Gt`/`Lt` values.
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut acc: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        acc = acc.checked_mul(10)?;
        acc = if negative {
            acc.checked_sub(d)?
        } else {
            acc.checked_add(d)?
        };
    }
    Some(acc)
}

// ---------------------------------------------------------------------------
// Digit-vector arithmetic (most significant digit first, each 0..=9)
// ---------------------------------------------------------------------------

fn strip_leading_zeros(digits: &mut Vec<u8>) {
    let zeros = digits.iter().take_while(|d| **d == 0).count();
    if zeros > 0 {
        digits.drain(..zeros);
    }
}

/// Removes trailing zeros and returns how many were removed.
fn strip_trailing_zeros(digits: &mut Vec<u8>) -> i128 {
    let zeros = digits.iter().rev().take_while(|d| **d == 0).count();
    digits.truncate(digits.len() - zeros);
    zeros as i128
}

/// Adds one to the last digit, propagating the carry.
fn increment(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

/// Multiplies in place by a small factor.
fn mul_small(digits: &mut Vec<u8>, factor: u32) {
    let mut carry: u32 = 0;
    for d in digits.iter_mut().rev() {
        let v = u32::from(*d) * factor + carry;
        *d = (v % 10) as u8;
        carry = v / 10;
    }
    let mut prefix = Vec::new();
    while carry > 0 {
        prefix.push((carry % 10) as u8);
        carry /= 10;
    }
    if !prefix.is_empty() {
        prefix.reverse();
        digits.splice(0..0, prefix);
    }
}

fn digits_to_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, d| {
        acc.checked_mul(10)?.checked_add(u128::from(*d))
    })
}

/// Compares two non-negative normalised values (no leading/trailing zeros).
fn cmp_magnitude(a: &[u8], a_exp: i128, b: &[u8], b_exp: i128) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        (false, false) => {}
    }
    // Position of the most significant digit decides first.
    let a_top = a.len() as i128 + a_exp;
    let b_top = b.len() as i128 + b_exp;
    a_top.cmp(&b_top).then_with(|| a.cmp(b))
}

// ---------------------------------------------------------------------------
// Trait impls
// ---------------------------------------------------------------------------

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.negative == other.negative
            && self.exponent == other.exponent
            && self.digits == other.digits
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.negative.hash(state);
        self.exponent.hash(state);
        self.digits.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        match self.signum().cmp(&other.signum()) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        let magnitude = cmp_magnitude(
            &self.digits,
            self.exponent.into(),
            &other.digits,
            other.exponent.into(),
        );
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_canonical_string())
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl Serialize for Quantity {
    /// Always the canonical string, like Go's `MarshalJSON`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// Accepts a quantity string (surrounding whitespace is trimmed, like Go's
    /// `UnmarshalJSON`) or a JSON number.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes quantity string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        parse(v.trim()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::from_i64(v, Format::DecimalSI))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        parse(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        if !v.is_finite() {
            return Err(E::custom(QuantityError::NonFinite { value: v }));
        }
        decimal_from_f64(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `m × 10^e` in `format` (like Go's `decQuantity` test helper).
    fn dec(m: i128, e: i128, format: Format) -> Quantity {
        let digits = m
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        build(m < 0, digits, e, format).expect("in range")
    }

    fn canon(s: &str) -> String {
        parse(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .to_canonical_string()
    }

    use Format::{BinarySI, DecimalExponent, DecimalSI};

    /// Go's TestQuantityParse table (value and format), plus the `-` and `+` variants.
    #[test]
    fn go_quantity_parse() {
        const MAX: i128 = i64::MAX as i128;
        let table: Vec<(&str, Quantity)> = vec![
            ("0", dec(0, 0, DecimalSI)),
            ("0n", dec(0, 0, DecimalSI)),
            ("0u", dec(0, 0, DecimalSI)),
            ("0m", dec(0, 0, DecimalSI)),
            ("0Ki", dec(0, 0, BinarySI)),
            ("0k", dec(0, 0, DecimalSI)),
            ("0Mi", dec(0, 0, BinarySI)),
            ("0M", dec(0, 0, DecimalSI)),
            ("0Gi", dec(0, 0, BinarySI)),
            ("0G", dec(0, 0, DecimalSI)),
            ("0Ti", dec(0, 0, BinarySI)),
            ("0T", dec(0, 0, DecimalSI)),
            ("1", dec(1, 0, DecimalSI)),
            ("1Ki", dec(1024, 0, BinarySI)),
            ("8Ki", dec(8 * 1024, 0, BinarySI)),
            ("7Mi", dec(7 << 20, 0, BinarySI)),
            ("6Gi", dec(6 << 30, 0, BinarySI)),
            ("5Ti", dec(5 << 40, 0, BinarySI)),
            ("4Pi", dec(4 << 50, 0, BinarySI)),
            ("3Ei", dec(3 << 60, 0, BinarySI)),
            ("10Ti", dec(10 << 40, 0, BinarySI)),
            ("100Ti", dec(100 << 40, 0, BinarySI)),
            ("5n", dec(5, -9, DecimalSI)),
            ("4u", dec(4, -6, DecimalSI)),
            ("3m", dec(3, -3, DecimalSI)),
            ("9", dec(9, 0, DecimalSI)),
            ("8k", dec(8, 3, DecimalSI)),
            ("50k", dec(5, 4, DecimalSI)),
            ("7M", dec(7, 6, DecimalSI)),
            ("6G", dec(6, 9, DecimalSI)),
            ("5T", dec(5, 12, DecimalSI)),
            ("40T", dec(4, 13, DecimalSI)),
            ("300T", dec(3, 14, DecimalSI)),
            ("2P", dec(2, 15, DecimalSI)),
            ("1E", dec(1, 18, DecimalSI)),
            ("1E-3", dec(1, -3, DecimalExponent)),
            ("1e3", dec(1, 3, DecimalExponent)),
            ("1E6", dec(1, 6, DecimalExponent)),
            ("1e9", dec(1, 9, DecimalExponent)),
            ("1E12", dec(1, 12, DecimalExponent)),
            ("1e15", dec(1, 15, DecimalExponent)),
            ("1E18", dec(1, 18, DecimalExponent)),
            ("1e14", dec(1, 14, DecimalExponent)),
            ("1e13", dec(1, 13, DecimalExponent)),
            ("100.035k", dec(100035, 0, DecimalSI)),
            ("0.001", dec(1, -3, DecimalSI)),
            ("0.0005k", dec(5, -1, DecimalSI)),
            ("0.005", dec(5, -3, DecimalSI)),
            ("0.05", dec(5, -2, DecimalSI)),
            ("0.5", dec(5, -1, DecimalSI)),
            ("0.00050k", dec(5, -1, DecimalSI)),
            ("0.00500", dec(5, -3, DecimalSI)),
            ("0.05000", dec(5, -2, DecimalSI)),
            ("0.50000", dec(5, -1, DecimalSI)),
            ("0.5e0", dec(5, -1, DecimalExponent)),
            ("0.5e-1", dec(5, -2, DecimalExponent)),
            ("0.5e-2", dec(5, -3, DecimalExponent)),
            ("10.035M", dec(10035, 3, DecimalSI)),
            ("1.2e3", dec(12, 2, DecimalExponent)),
            ("1.3E+6", dec(13, 5, DecimalExponent)),
            ("1.40e9", dec(14, 8, DecimalExponent)),
            ("1.53E12", dec(153, 10, DecimalExponent)),
            ("1.6e15", dec(16, 14, DecimalExponent)),
            ("1.7E18", dec(17, 17, DecimalExponent)),
            ("9.01", dec(901, -2, DecimalSI)),
            ("8.1k", dec(81, 2, DecimalSI)),
            ("7.123456M", dec(7123456, 0, DecimalSI)),
            ("6.987654321G", dec(6987654321, 0, DecimalSI)),
            ("5.444T", dec(5444, 9, DecimalSI)),
            ("40.1T", dec(401, 11, DecimalSI)),
            ("300.2T", dec(3002, 11, DecimalSI)),
            ("2.5P", dec(25, 14, DecimalSI)),
            ("1.01E", dec(101, 16, DecimalSI)),
            // Things that saturate/round
            ("3.001n", dec(4, -9, DecimalSI)),
            ("1.1E-9", dec(2, -9, DecimalExponent)),
            ("0.0000000001", dec(1, -9, DecimalSI)),
            ("0.0000000005", dec(1, -9, DecimalSI)),
            ("0.00000000050", dec(1, -9, DecimalSI)),
            ("0.5e-9", dec(1, -9, DecimalExponent)),
            ("0.9n", dec(1, -9, DecimalSI)),
            ("0.00000012345", dec(124, -9, DecimalSI)),
            ("0.00000012354", dec(124, -9, DecimalSI)),
            ("9Ei", dec(MAX, 0, BinarySI)),
            ("9223372036854775807Ki", dec(MAX, 0, BinarySI)),
            ("12E", dec(12, 18, DecimalSI)),
            // Fractional binary
            ("100.035Ki", dec(10243584, -2, BinarySI)),
            ("0.5Mi", dec(512 * 1024, 0, BinarySI)),
            ("0.05Gi", dec(536870912, -1, BinarySI)),
            ("0.025Ti", dec(274877906944, -1, BinarySI)),
            // Things written by trolls
            ("0.000000000001Ki", dec(2, -9, DecimalSI)),
            (".001", dec(1, -3, DecimalSI)),
            (".0001k", dec(100, -3, DecimalSI)),
            ("1.", dec(1, 0, DecimalSI)),
            ("1.G", dec(1, 9, DecimalSI)),
        ];
        for (input, want) in &table {
            for (prefix, sign) in [("", 1), ("-", -1), ("+", 1)] {
                let text = format!("{prefix}{input}");
                let got = parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                let mut expected = want.clone();
                if sign < 0 && !expected.is_zero() {
                    expected.negative = true;
                }
                assert_eq!(got, expected, "{text:?}: {got} vs {expected}");
                assert_eq!(got.format(), want.format(), "{text:?}");
            }
        }
    }

    #[test]
    fn go_invalid_quantities() {
        let cases: &[(&str, QuantityError)] = &[
            ("", QuantityError::FormatWrong),
            ("1.1.M", QuantityError::FormatWrong),
            ("1+1.0M", QuantityError::FormatWrong),
            ("0.1mi", QuantityError::Suffix),
            ("0.1am", QuantityError::FormatWrong),
            ("aoeu", QuantityError::FormatWrong),
            (".5i", QuantityError::Suffix),
            ("1i", QuantityError::Suffix),
            ("-3.01i", QuantityError::Suffix),
            ("-3.01e-", QuantityError::Suffix),
            (" 1", QuantityError::FormatWrong),
            ("1 ", QuantityError::FormatWrong),
            ("e", QuantityError::Suffix),
            ("1e", QuantityError::Suffix),
            ("1e+", QuantityError::Suffix),
            ("1E-", QuantityError::Suffix),
            ("1ee5", QuantityError::Suffix),
            ("1Ki5", QuantityError::Suffix),
            ("1k1", QuantityError::Suffix),
            ("1KI", QuantityError::FormatWrong),
            ("1K", QuantityError::Suffix),
            ("1mm", QuantityError::Suffix),
            ("1e1.5", QuantityError::FormatWrong),
            ("1e+-5", QuantityError::FormatWrong),
            // Go reads the second sign as the start of an (invalid) suffix.
            ("--1", QuantityError::Suffix),
            ("+-1", QuantityError::Suffix),
            ("1..", QuantityError::FormatWrong),
            ("1,5", QuantityError::FormatWrong),
            ("1_000", QuantityError::FormatWrong),
            ("0x10", QuantityError::FormatWrong),
            ("NaN", QuantityError::FormatWrong),
            ("Inf", QuantityError::FormatWrong),
            ("١", QuantityError::FormatWrong),
            // Exponent overflowing int64 (Go's ParseInt fails too).
            ("1e9223372036854775808", QuantityError::Suffix),
            // Go's inf.Dec path rejects a mantissa without digits.
            (".e-10", QuantityError::Numeric),
            ("-.E-100", QuantityError::Numeric),
            ("e-10", QuantityError::Numeric),
            ("Pi", QuantityError::Numeric),
            ("-.Ei", QuantityError::Numeric),
            ("+Pi", QuantityError::Numeric),
            // Beyond our exponent range (Go would silently wrap to 32 bits).
            ("1e2147483648", QuantityError::ExponentOutOfRange),
            ("10e2147483647", QuantityError::ExponentOutOfRange),
            ("1e9223372036854775807", QuantityError::ExponentOutOfRange),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap_err(), *want, "{input:?}");
        }
    }

    /// Inputs Go accepts although they look odd; we accept them the same way.
    #[test]
    fn go_parse_quirks() {
        let zero_cases: &[(&str, Format)] = &[
            ("+", DecimalSI),
            ("-", DecimalSI),
            (".", DecimalSI),
            ("-.", DecimalSI),
            ("+.", DecimalSI),
            ("00", DecimalSI),
            ("-0", DecimalSI),
            ("-000.000", DecimalSI),
            ("k", DecimalSI),
            ("-m", DecimalSI),
            ("Mi", BinarySI),
            (".Ki", BinarySI),
            ("-Ti", BinarySI),
            ("0e3", DecimalExponent),
            ("e5", DecimalExponent),
            (".e-9", DecimalExponent),
            ("0.e-10", DecimalExponent),
            ("0e-2147483648", DecimalExponent),
            ("0e9223372036854775807", DecimalExponent),
        ];
        for (input, format) in zero_cases {
            let q = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert!(q.is_zero(), "{input:?}");
            assert_eq!(q.format(), *format, "{input:?}");
            assert_eq!(q.to_canonical_string(), "0", "{input:?}");
        }
        // Tiny exponents round up to one nano; exponents are not truncated to 32 bits.
        assert_eq!(canon("1e-2147483648"), "1e-9");
        assert_eq!(canon("1n"), "1n");
        assert_eq!(canon("0.0000000000000000001"), "1n");
        assert_eq!(canon("-1e-9223372036854775808"), "-1e-9");
        assert_eq!(canon("1e2147483647"), "10e2147483646");
        assert_eq!(canon("0.1e2147483648"), "10e2147483646");
        assert_eq!(canon("1e+0005"), "100e3");
        assert_eq!(canon("000123"), "123");
        assert_eq!(canon("1E"), "1E");
        assert_eq!(canon("1Ei"), "1Ei");
    }

    /// Go's TestQuantityString: value → canonical, canonical and alternate re-parse,
    /// and the negative form.
    #[test]
    fn go_quantity_string() {
        let table: Vec<(Quantity, &str, &str)> = vec![
            (dec(1 << 30, 0, BinarySI), "1Gi", "1024Mi"),
            (dec(300 << 20, 0, BinarySI), "300Mi", "307200Ki"),
            (dec(6 * 1024, 0, BinarySI), "6Ki", ""),
            (dec(1001 << 30, 0, BinarySI), "1001Gi", "1025024Mi"),
            (dec(1 << 40, 0, BinarySI), "1Ti", "1024Gi"),
            (dec(5, 0, BinarySI), "5", "5000m"),
            (dec(500, -3, BinarySI), "500m", "0.5"),
            (dec(1, 9, DecimalSI), "1G", "1000M"),
            (dec(1000, 6, DecimalSI), "1G", "0.001T"),
            (dec(1000000, 3, DecimalSI), "1G", ""),
            (dec(1000000000, 0, DecimalSI), "1G", ""),
            (dec(1, -3, DecimalSI), "1m", "1000u"),
            (dec(80, -3, DecimalSI), "80m", ""),
            (dec(1080, -3, DecimalSI), "1080m", "1.08"),
            (dec(108, -2, DecimalSI), "1080m", "1080000000n"),
            (dec(10800, -4, DecimalSI), "1080m", ""),
            (dec(300, 6, DecimalSI), "300M", ""),
            (dec(1, 12, DecimalSI), "1T", ""),
            (dec(1234567, 6, DecimalSI), "1234567M", ""),
            (dec(1234567, -3, BinarySI), "1234567m", ""),
            (dec(3, 3, DecimalSI), "3k", ""),
            (dec(1025, 0, BinarySI), "1025", ""),
            (dec(0, 0, DecimalSI), "0", ""),
            (dec(0, 0, BinarySI), "0", ""),
            (dec(1, 9, DecimalExponent), "1e9", ".001e12"),
            (dec(1, -3, DecimalExponent), "1e-3", "0.001e0"),
            (dec(1, -9, DecimalExponent), "1e-9", "1000e-12"),
            (dec(80, -3, DecimalExponent), "80e-3", ""),
            (dec(300, 6, DecimalExponent), "300e6", ""),
            (dec(1, 12, DecimalExponent), "1e12", ""),
            (dec(1, 3, DecimalExponent), "1e3", ""),
            (dec(3, 3, DecimalExponent), "3e3", ""),
            (dec(3, 3, DecimalSI), "3k", ""),
            (dec(0, 0, DecimalExponent), "0", "00"),
            (dec(1, -9, DecimalSI), "1n", ""),
            (dec(80, -9, DecimalSI), "80n", ""),
            (dec(1080, -9, DecimalSI), "1080n", ""),
            (dec(108, -8, DecimalSI), "1080n", ""),
            (dec(10800, -10, DecimalSI), "1080n", ""),
            (dec(1, -6, DecimalSI), "1u", ""),
            (dec(80, -6, DecimalSI), "80u", ""),
            (dec(1080, -6, DecimalSI), "1080u", ""),
        ];
        for (q, want, alternate) in &table {
            assert_eq!(q.to_canonical_string(), *want, "{q:?}");
            assert_eq!(q.to_string(), *want, "{q:?}");
            assert_eq!(canon(want), *want, "re-parse {want:?}");
            if !alternate.is_empty() {
                assert_eq!(canon(alternate), *want, "alternate {alternate:?}");
            }
            if !q.is_zero() {
                let mut neg = q.clone();
                neg.negative = true;
                assert_eq!(neg.to_canonical_string(), format!("-{want}"));
            }
        }
    }

    /// Go's TestQuantityParseEmit, the contract §3.3 table, and the > 10^18 fix.
    #[test]
    fn parse_emit() {
        let cases: &[(&str, &str)] = &[
            ("1Ki", "1Ki"),
            ("1Mi", "1Mi"),
            ("1Gi", "1Gi"),
            ("1024Mi", "1Gi"),
            ("1000M", "1G"),
            (".001Ki", "1024m"),
            (".000001Ki", "1024u"),
            (".000000001Ki", "1024n"),
            (".000000000001Ki", "2n"),
            // Contract §3.3 table.
            ("1.5", "1500m"),
            ("0.5", "500m"),
            ("1080e-3", "1080e-3"),
            ("1.08", "1080m"),
            ("1e9", "1e9"),
            ("1G", "1G"),
            ("3000", "3k"),
            ("1025Ki", "1025Ki"),
            ("1e-3", "1e-3"),
            ("80e-3", "80e-3"),
            ("300e6", "300e6"),
            ("0.000000001", "1n"),
            ("1e-9", "1e-9"),
            // More binary: |v| < 1024 and fractions fall back to DecimalSI.
            ("1023", "1023"),
            ("0.5Ki", "512"),
            ("1.5Ki", "1536"),
            ("1.0005Ki", "1024512m"),
            ("1536Ki", "1536Ki"),
            ("2048Ki", "2Mi"),
            ("1048576Ki", "1Gi"),
            ("0.5Mi", "512Ki"),
            ("8Ei", "9223372036854775807"),
            ("7Ei", "7Ei"),
            ("9223372036854775807Ki", "9223372036854775807"),
            ("1024", "1024"),
            ("1536", "1536"),
            ("56000", "56k"),
            // Decimal rounding and grouping.
            ("0.1", "100m"),
            ("0.01", "10m"),
            ("0.0001", "100u"),
            ("12345.6789", "12345678900u"),
            ("1.000000001", "1000000001n"),
            ("1.0000000001", "1000000001n"),
            ("1.9999999999", "2"),
            ("999.9999999999", "1k"),
            ("-999.9999999999", "-1k"),
            ("0.0000000019999", "2n"),
            ("10", "10"),
            ("100", "100"),
            ("1000", "1k"),
            ("10000", "10k"),
            ("1000000000000000000", "1E"),
            ("999E", "999E"),
            ("1500E", "1500E"),
            ("1.5e0", "1500e-3"),
            ("15e2", "1500"),
            ("15E3", "15e3"),
            ("1e0", "1"),
            ("5e1", "50"),
            // DecimalSI beyond E: exponent form instead of dropping the magnitude.
            ("1000E", "1e21"),
            ("5000E", "5e21"),
            ("1000000E", "1e24"),
            ("10000E", "10e21"),
            ("-1000E", "-1e21"),
            ("1000000000000000000000", "1e21"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            (
                "1234567890123456789012345678900",
                "1234567890123456789012345678900",
            ),
            (
                "1234567890123456789012345678900000",
                "1234567890123456789012345678900k",
            ),
            (
                "1234567890123456789012345678900000000000000",
                "1234567890123456789012345678900T",
            ),
            (
                "12345678901234567890123456789000E",
                "12345678901234567890123456789e21",
            ),
            (
                "1234567890123456789012345678900E",
                "1234567890123456789012345678900E",
            ),
            ("1e21", "1e21"),
            ("1e22", "10e21"),
            ("0.123456789123456789123456789", "123456790n"),
        ];
        for (input, want) in cases {
            assert_eq!(canon(input), *want, "{input:?}");
            if !input.starts_with('-') {
                let negative = format!("-{input}");
                assert_eq!(canon(&negative), format!("-{want}"), "{negative:?}");
            }
            // Canonical output is a fixed point.
            assert_eq!(canon(want), *want, "{want:?}");
            assert_eq!(parse(want).unwrap(), parse(input).unwrap(), "{input:?}");
        }
    }

    /// The one case where canonical output is not a fixed point, as in Go: a BinarySI value
    /// that is no whole number of Ki prints as a plain integer, which parses as DecimalSI and
    /// so, canonical once more, takes a decimal suffix.
    #[test]
    fn a_fractional_binary_value_becomes_decimal_on_reparse() {
        assert_eq!(canon("54.6875Ki"), "56000");
        assert_eq!(canon("56000"), "56k");
        assert_eq!(parse("56k").unwrap(), parse("54.6875Ki").unwrap());
        assert_eq!(canon("1.5Ki"), "1536");
        assert_eq!(canon("1536"), "1536");
    }

    #[test]
    fn from_f64_vectors() {
        let cases: &[(f64, &str)] = &[
            (0.5, "500m"),
            (2472.0, "2472"),
            (1.5, "1500m"),
            (3000.0, "3k"),
            (0.1234, "123400u"),
            (1e-10, "1n"),
            (-1e-10, "-1n"),
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.1, "100m"),
            (0.2 + 0.1, "300000001n"), // 0.30000000000000004 rounds up
            (1.0 / 3.0, "333333334n"),
            (-1.0 / 3.0, "-333333334n"),
            (2.0 / 3.0, "666666667n"),
            (123.456, "123456m"),
            (1e15, "1P"),
            (1e3, "1k"),
            (12e3, "12k"),
            (9.2e15, "9200T"),
            (-9.2e15, "-9200T"),
            (1e-9, "1n"),
            (1.5e-9, "2n"),
            (2e-9, "2n"),
            (123456789.12345679, "123456789123456790n"),
            (f64::MIN_POSITIVE, "1n"),
            (-f64::MIN_POSITIVE, "-1n"),
            (5e-324, "1n"),
            (9223372036854774.0, "9223372036854774"),
            (-9223372036854774.0, "-9223372036854774"),
            (4503599627370497.0, "4503599627370497"),
            (0.001, "1m"),
            (0.000001, "1u"),
            (1e-5, "10u"),
            (42.0, "42"),
            // Exact ties between two shortest candidates go to the even one, as in
            // Go (Rust's `{:e}` would print ...145.3 here).
            (936777802191145.2, "936777802191145200m"),
            (181889904567395.62, "181889904567395620m"),
            (-93029090298131.62, "-93029090298131620m"),
            (0.3, "300m"),
            (2.5, "2500m"),
            (1e-7, "100n"),
            (1e21 / 1e6, "1P"),
            (100.0, "100"),
        ];
        for (v, want) in cases {
            let q = from_f64(*v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(q.to_canonical_string(), *want, "{v}");
            assert_eq!(q.format(), DecimalSI);
            assert_eq!(Quantity::from_f64(*v).unwrap(), q);
        }
        assert_eq!(from_f64(0.5).unwrap().milli_value(), Some(500));
        assert_eq!(from_f64(1e-10).unwrap().milli_value(), Some(1));
        assert_eq!(from_f64(2472.0).unwrap().milli_value(), Some(2472000));
        assert_eq!(
            from_f64(9223372036854774.0).unwrap().milli_value(),
            Some(9223372036854774000)
        );
    }

    #[test]
    fn from_f64_errors() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            assert!(
                matches!(from_f64(v), Err(QuantityError::NonFinite { .. })),
                "{v}"
            );
        }
        // Milli-value outside i64 (spacing between floats here is 2).
        for v in [
            9223372036854776.0,
            -9223372036854776.0,
            1e16,
            -1e16,
            1e300,
            f64::MAX,
            f64::MIN,
            9.3e15,
        ] {
            assert!(
                matches!(from_f64(v), Err(QuantityError::OutOfRange { .. })),
                "{v}"
            );
        }
        assert_eq!(
            from_f64(f64::NAN).unwrap_err().to_string(),
            "cannot represent non-finite value NaN as a quantity"
        );
        assert_eq!(
            from_f64(1e16).unwrap_err().to_string(),
            "value 10000000000000000 is out of range: its milli-value does not fit in a 64-bit integer"
        );
    }

    #[test]
    fn milli_value_and_value() {
        let cases: &[(&str, Option<i64>, Option<i64>)] = &[
            ("0", Some(0), Some(0)),
            ("1", Some(1000), Some(1)),
            ("1m", Some(1), Some(1)),
            ("1n", Some(1), Some(1)),
            ("0.5m", Some(1), Some(1)),
            ("1.5", Some(1500), Some(2)),
            ("1001u", Some(2), Some(1)),
            ("1Ki", Some(1024000), Some(1024)),
            ("1k", Some(1_000_000), Some(1000)),
            // Negative values round away from zero, like Go's int64 path.
            ("-1n", Some(-1), Some(-1)),
            ("-1500u", Some(-2), Some(-1)),
            ("-1.5", Some(-1500), Some(-2)),
            (
                "9223372036854775807m",
                Some(i64::MAX),
                Some(9223372036854776),
            ),
            ("9223372036854775808m", None, Some(9223372036854776)),
            (
                "-9223372036854775808m",
                Some(i64::MIN),
                Some(-9223372036854776),
            ),
            ("-9223372036854775809m", None, Some(-9223372036854776)),
            (
                "9223372036854775806001u",
                Some(i64::MAX),
                Some(9223372036854776),
            ),
            ("9223372036854775807001u", None, Some(9223372036854776)),
            ("9Ei", None, Some(i64::MAX)),
            ("-9Ei", None, Some(-i64::MAX)),
            ("1E", None, Some(1_000_000_000_000_000_000)),
            ("10E", None, None),
            ("1e100", None, None),
            ("1e2147483647", None, None),
            ("9223372036854775807", None, Some(i64::MAX)),
            ("9223372036854775808", None, None),
            ("-9223372036854775808", None, Some(i64::MIN)),
        ];
        for (input, milli, value) in cases {
            let q = parse(input).unwrap();
            assert_eq!(q.milli_value(), *milli, "milli {input:?}");
            assert_eq!(q.value(), *value, "value {input:?}");
        }
    }

    #[test]
    fn constructors_and_accessors() {
        assert_eq!(Quantity::from_i64(5, DecimalSI).to_string(), "5");
        assert_eq!(Quantity::from_i64(-3000, DecimalSI).to_string(), "-3k");
        assert_eq!(Quantity::from_i64(2048, BinarySI).to_string(), "2Ki");
        assert_eq!(
            Quantity::from_i64(i64::MAX, BinarySI).to_string(),
            "9223372036854775807"
        );
        // -2^63 exceeds the BinarySI cap in magnitude.
        assert_eq!(
            Quantity::from_i64(i64::MIN, BinarySI).to_string(),
            "-9223372036854775807"
        );
        assert_eq!(
            Quantity::from_i64(i64::MIN, DecimalSI).to_string(),
            "-9223372036854775808"
        );
        assert_eq!(Quantity::from_milli(1500, DecimalSI).to_string(), "1500m");
        assert_eq!(Quantity::from_milli(1500, BinarySI).to_string(), "1500m");
        assert_eq!(Quantity::from_milli(500, BinarySI).format(), DecimalSI);
        assert_eq!(
            Quantity::from_milli(i64::MIN, DecimalSI).milli_value(),
            Some(i64::MIN)
        );
        assert_eq!(
            Quantity::from_milli(0, DecimalExponent).format(),
            DecimalExponent
        );
        assert_eq!(Quantity::from_i64(3000, DecimalExponent).to_string(), "3e3");

        let mut q = parse("1536Mi").unwrap();
        assert_eq!(q.format(), BinarySI);
        assert_eq!(q.to_string(), "1536Mi");
        q.set_format(DecimalSI);
        assert_eq!(q.to_string(), "1610612736");
        q.set_format(DecimalExponent);
        assert_eq!(q.to_string(), "1610612736");
        let mut q = parse("1G").unwrap();
        q.set_format(DecimalExponent);
        assert_eq!(q.to_string(), "1e9");
        q.set_format(BinarySI);
        assert_eq!(q.to_string(), "1000000000");
        let mut q = parse("1.024G").unwrap();
        q.set_format(BinarySI);
        assert_eq!(q.to_string(), "1000000Ki");

        assert_eq!(Quantity::zero(), Quantity::default());
        assert!(Quantity::zero().is_zero());
        assert_eq!(Quantity::zero().signum(), 0);
        assert_eq!(parse("-1n").unwrap().signum(), -1);
        assert_eq!(parse("1n").unwrap().signum(), 1);
        assert_eq!(format!("{:>6}", parse("1k").unwrap()), "    1k");
        assert_eq!("1Gi".parse::<Quantity>().unwrap().to_string(), "1Gi");
        assert_eq!(Quantity::parse("1Gi").unwrap(), parse("1Gi").unwrap());
        assert_eq!(Format::BinarySI.to_string(), "BinarySI");
        assert_eq!(Format::default(), DecimalSI);
    }

    /// Go's TestQuantityCmp plus ordering/equality/hash consistency.
    #[test]
    fn ordering_and_equality() {
        use std::collections::HashSet;
        let lt = |a: &str, b: &str| {
            let (qa, qb) = (parse(a).unwrap(), parse(b).unwrap());
            assert!(qa < qb, "{a} < {b}");
            assert!(qb > qa, "{b} > {a}");
            assert_ne!(qa, qb);
        };
        lt("50m", "100m");
        lt("100Gi", "10000T");
        lt("-1", "0");
        lt("0", "1n");
        lt("-1n", "0");
        lt("-2", "-1");
        lt("1k", "1Ki");
        lt("999E", "1e21");
        lt("1e21", "1e2147483647");
        lt("-1e2147483647", "-1e21");
        lt("0.1", "0.11");
        lt("0.11", "0.2");
        let eq = |a: &str, b: &str| {
            let (qa, qb) = (parse(a).unwrap(), parse(b).unwrap());
            assert_eq!(qa, qb, "{a} == {b}");
            assert_eq!(qa.cmp(&qb), Ordering::Equal);
            let set: HashSet<Quantity> = [qa, qb].into_iter().collect();
            assert_eq!(set.len(), 1, "{a} hash {b}");
        };
        eq("0", "0Ki");
        eq("0", "-0");
        eq("1000m", "1");
        eq("1Ki", "1024");
        eq("1e3", "1k");
        eq("1.5", "1500m");
        eq("0.0000000001", "1n");
    }

    #[test]
    fn serde_round_trip() {
        let q = parse("1.5").unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"1500m\"");
        assert_eq!(
            serde_json::to_string(&parse("1000E").unwrap()).unwrap(),
            "\"1e21\""
        );
        assert_eq!(serde_json::to_string(&Quantity::zero()).unwrap(), "\"0\"");
        let back: Quantity = serde_json::from_str("\"1500m\"").unwrap();
        assert_eq!(back, q);
        let trimmed: Quantity = serde_json::from_str("\" 1Gi \"").unwrap();
        assert_eq!(trimmed.to_string(), "1Gi");
        let number: Quantity = serde_json::from_str("1.5").unwrap();
        assert_eq!(number.to_string(), "1500m");
        let int: Quantity = serde_json::from_str("3000").unwrap();
        assert_eq!(int.to_string(), "3k");
        let neg: Quantity = serde_json::from_str("-7").unwrap();
        assert_eq!(neg.to_string(), "-7");
        let big: Quantity = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(big.to_string(), "18446744073709551615");
        assert!(serde_json::from_str::<Quantity>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Quantity>("true").is_err());
        #[derive(serde::Serialize)]
        struct Item {
            value: Quantity,
        }
        assert_eq!(
            serde_json::to_string(&Item {
                value: from_f64(0.1234).unwrap()
            })
            .unwrap(),
            "{\"value\":\"123400u\"}"
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            QuantityError::FormatWrong.to_string(),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(
            QuantityError::Numeric.to_string(),
            "unable to parse numeric part of quantity"
        );
        assert_eq!(
            QuantityError::Suffix.to_string(),
            "unable to parse quantity's suffix"
        );
    }

    #[test]
    fn float_decimal_helpers() {
        assert_eq!(exact_decimal(0.5), Some((5, -1)));
        assert_eq!(exact_decimal(10.0), Some((1, 1)));
        assert_eq!(exact_decimal(0.125), Some((125, -3)));
        assert_eq!(
            // The float written 936777802191145.2 is exactly 936777802191145.25.
            exact_decimal(936777802191145.2),
            Some((93677780219114525, -2))
        );
        assert_eq!(exact_decimal(0.1), None); // 55 significant digits
        assert_eq!(
            exact_decimal(1e30),
            Some((1000000000000000019884624838656, 0))
        );
        assert_eq!(exact_decimal(1e40), None);
        assert_eq!(shortest_decimal(0.1), Some((1, -1)));
        assert_eq!(shortest_decimal(2472.0), Some((2472, 0)));
        assert_eq!(shortest_decimal(1e21), Some((1, 21)));
        assert_eq!(
            shortest_decimal(936777802191145.2),
            Some((9367778021911452, -1))
        );
        assert_eq!(shortest_decimal(f64::MAX), Some((17976931348623157, 292)));
        assert_eq!(shortest_decimal(5e-324), Some((5, -324)));
    }

    #[test]
    fn digit_helpers() {
        let mut d = vec![9, 9];
        increment(&mut d);
        assert_eq!(d, vec![1, 0, 0]);
        let mut d = vec![1, 2];
        mul_small(&mut d, 1024);
        assert_eq!(d, vec![1, 2, 2, 8, 8]);
        let mut d: Vec<u8> = vec![];
        mul_small(&mut d, 1024);
        assert!(d.is_empty());
        assert_eq!(cmp_magnitude(&[1], 3, &[1, 0, 2, 4], 0), Ordering::Less);
        assert_eq!(cmp_magnitude(&[1, 5], 0, &[1, 5], 0), Ordering::Equal);
        assert_eq!(cmp_magnitude(&[1, 5], 0, &[1, 5, 1], -1), Ordering::Less);
    }

    // ----------------------------------------------------------------- proptest

    /// Strings shaped like quantities (valid and invalid).
    fn quantity_like() -> impl Strategy<Value = String> {
        "[-+]?[0-9]{0,22}(\\.[0-9]{0,22})?(|n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?[0-9]{1,3})"
    }

    /// Arbitrary exact values: up to 40 digits at exponents from far below nano to 10^40.
    fn arbitrary_quantity() -> impl Strategy<Value = Quantity> {
        (
            any::<bool>(),
            proptest::collection::vec(0u8..10, 0..40),
            -60i128..40,
            prop_oneof![Just(DecimalSI), Just(BinarySI), Just(DecimalExponent)],
        )
            .prop_map(|(neg, digits, exp, format)| {
                build(neg, digits, exp, format).expect("small exponents are in range")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_soup(s in "[-+0-9.eEinumkKMGTP ]{0,24}") {
            if let Ok(q) = parse(&s) {
                let c = q.to_canonical_string();
                prop_assert_eq!(parse(&c).map_err(|e| TestCaseError::fail(format!("{c}: {e}")))?, q);
            }
        }

        #[test]
        fn canonical_round_trips(s in quantity_like()) {
            if let Ok(q) = parse(&s) {
                let c = q.to_canonical_string();
                let back = parse(&c).map_err(|e| TestCaseError::fail(format!("{s} -> {c}: {e}")))?;
                prop_assert_eq!(&back, &q, "{} -> {}", s, c);
                // Not always `c` itself: a BinarySI value that is no whole number of Ki
                // prints as a plain integer, which parses as DecimalSI (Go does the same,
                // `54.6875Ki` -> `56000` -> `56k`). From there the form is fixed.
                let c2 = back.to_canonical_string();
                let again = parse(&c2).map_err(|e| TestCaseError::fail(format!("{c} -> {c2}: {e}")))?;
                prop_assert_eq!(&again, &q, "{} -> {} -> {}", s, c, c2);
                prop_assert_eq!(again.to_canonical_string(), c2);
            }
        }

        #[test]
        fn canonical_round_trips_arbitrary(q in arbitrary_quantity()) {
            let c = q.to_canonical_string();
            let back = parse(&c).map_err(|e| TestCaseError::fail(format!("{c}: {e}")))?;
            prop_assert_eq!(&back, &q, "{}", c);
            // The string is a fixed point unless a BinarySI value printed without a
            // binary suffix comes back as DecimalSI (as in Go: 10000 BinarySI → "10000" → "10k").
            let again = back.to_canonical_string();
            if q.format() != BinarySI || c.ends_with('i') {
                prop_assert_eq!(&again, &c);
            }
            prop_assert_eq!(parse(&again).expect("canonical parses").to_canonical_string(), again.clone());
            // The canonical mantissa is an integer and the exponent a multiple of 3.
            let body = c.trim_start_matches('-');
            let digits_end = body.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(body.len());
            prop_assert!(digits_end > 0);
            if let Some(exp) = body[digits_end..].strip_prefix('e') {
                let exp: i64 = exp.parse().expect("numeric exponent");
                prop_assert_eq!(exp.rem_euclid(3), 0);
                prop_assert!(exp != 0);
            }
            // Serde agrees with Display.
            prop_assert_eq!(serde_json::to_string(&q).expect("serialize"), format!("\"{c}\""));
        }

        #[test]
        fn ordering_matches_i64(a in any::<i64>(), b in any::<i64>()) {
            let (qa, qb) = (Quantity::from_i64(a, DecimalSI), Quantity::from_i64(b, DecimalSI));
            prop_assert_eq!(qa.cmp(&qb), a.cmp(&b));
            prop_assert_eq!(qa.value(), Some(a));
            let qm = Quantity::from_milli(a, DecimalSI);
            prop_assert_eq!(qm.milli_value(), Some(a));
            prop_assert_eq!(parse(&qm.to_string()).expect("canonical parses"), qm);
        }

        #[test]
        fn from_f64_never_panics(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            match from_f64(v) {
                Ok(q) => {
                    prop_assert!(v.is_finite());
                    let c = q.to_canonical_string();
                    prop_assert_eq!(parse(&c).expect("canonical parses"), q.clone());
                    prop_assert!(q.milli_value().is_some());
                }
                Err(QuantityError::NonFinite { .. }) => prop_assert!(!v.is_finite()),
                Err(QuantityError::OutOfRange { .. }) => prop_assert!(v.abs() >= 9.2e15),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn from_f64_matches_decimal_text(v in -1e16f64..1e16) {
            if let Ok(q) = from_f64(v) {
                // The digits are a shortest representation that reads back as v.
                if v != 0.0 {
                    let (d, e) = shortest_decimal(v.abs()).expect("finite");
                    prop_assert_eq!(format!("{d}e{e}").parse::<f64>().expect("parses"), v.abs());
                    let rust_shortest = format!("{:e}", v.abs());
                    let rust_digits = rust_shortest.split('e').next().expect("mantissa").replace('.', "");
                    prop_assert_eq!(d.to_string().len(), rust_digits.len(), "{} vs {}", d, rust_shortest);
                    // Same value as parsing Rust's plain decimal rendering, except on
                    // exact ties where Go (and we) pick the even candidate.
                    let text = format!("{v}");
                    if rust_digits == d.to_string() {
                        prop_assert_eq!(parse(&text).expect("decimal text parses"), q.clone(), "{}", text);
                    }
                }
                let milli = q.milli_value().expect("in range") as f64;
                prop_assert!((milli - (v * 1000.0).ceil()).abs() <= 1.0 + (v * 1000.0).abs() * 1e-15,
                    "{} -> {}", v, milli);
            }
        }

        #[test]
        fn from_f64_is_monotonic(a in -1e12f64..1e12, b in -1e12f64..1e12) {
            let (qa, qb) = (from_f64(a).expect("in range"), from_f64(b).expect("in range"));
            if a < b {
                prop_assert!(qa <= qb, "{} {} -> {} {}", a, b, qa, qb);
            }
        }

        #[test]
        fn tiny_values_round_to_nano(v in 1e-300f64..1e-9) {
            prop_assert_eq!(from_f64(v).expect("in range").to_string(), "1n");
            prop_assert_eq!(from_f64(-v).expect("in range").to_string(), "-1n");
        }
    }
}
