//! Exact usage values: fixed-point decimals with nine fractional digits, never a float sum.
//!
//! Stored as `i128` units of 10⁻⁹, which is ClickHouse's `Decimal(38, 9)` bit for bit.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of fractional decimal digits a quantity keeps.
pub const SCALE: u32 = 9;
const UNITS_PER_ONE: i128 = 10i128.pow(SCALE);
/// A float can only be taken as exact when its shortest decimal form has this many significant
/// digits or fewer; larger values must be sent as strings.
const FLOAT_EXACT_DIGITS: usize = 15;
/// Decimal(38, 9) holds 38 digits in all.
const MAX_DIGITS: usize = 38;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(i128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("is not a decimal number (expected digits with an optional '.' fraction, e.g. \"12.5\")")]
    NotANumber,
    #[error("has more than {SCALE} decimal places")]
    TooManyDecimals,
    #[error("has more than {MAX_DIGITS} digits")]
    TooManyDigits,
    #[error(
        "is a JSON float with more than {FLOAT_EXACT_DIGITS} significant digits, which cannot be read exactly; send it as a string"
    )]
    ImpreciseFloat,
}

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    /// From raw units of 10⁻⁹.
    pub const fn from_units(units: i128) -> Self {
        Self(units)
    }

    pub const fn from_int(value: i64) -> Self {
        Self(value as i128 * UNITS_PER_ONE)
    }

    /// Raw units of 10⁻⁹ (what ClickHouse's `Decimal(38, 9)` stores).
    pub const fn units(self) -> i128 {
        self.0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.0.checked_add(other.0).map(Quantity)
    }

    fn from_float(value: f64) -> Result<Self, QuantityError> {
        if !value.is_finite() {
            return Err(QuantityError::NotANumber);
        }
        // Display prints the shortest decimal that reads back as the same f64: for a value sent
        // with few enough digits, that is exactly what the sender wrote.
        let text = value.to_string();
        let significant =
            text.trim_start_matches('-').replace('.', "").trim_start_matches('0').trim_end_matches('0').len();
        if significant > FLOAT_EXACT_DIGITS {
            return Err(QuantityError::ImpreciseFloat);
        }
        text.parse()
    }
}

macro_rules! from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for Quantity {
            fn from(value: $t) -> Self {
                Self(i128::from(value) * UNITS_PER_ONE)
            }
        }
    )*};
}

from_integer!(i32, i64, u32, u64);

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(QuantityError::NotANumber);
        }
        if digits.contains('.') && fraction.is_empty() {
            return Err(QuantityError::NotANumber);
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > SCALE as usize {
            return Err(QuantityError::TooManyDecimals);
        }
        let whole = whole.trim_start_matches('0');
        if whole.len() + SCALE as usize > MAX_DIGITS {
            return Err(QuantityError::TooManyDigits);
        }
        let mut units: i128 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            units = units * 10 + i128::from(b - b'0');
        }
        units *= 10i128.pow(SCALE - fraction.len() as u32);
        Ok(Self(if negative { -units } else { units }))
    }
}

/// Room for the longest canonical text: a sign, 30 whole digits, a point and 9 fraction digits.
pub const TEXT_CAPACITY: usize = 48;

impl Quantity {
    /// Writes the canonical decimal text (what `Display` prints: no exponent, no trailing
    /// fraction zeros) into the end of `buffer` and returns it.
    pub fn write_text(self, buffer: &mut [u8; TEXT_CAPACITY]) -> &str {
        let abs = self.0.unsigned_abs();
        let mut start = TEXT_CAPACITY;
        let mut push = |digit: u8| {
            start -= 1;
            buffer[start] = digit;
        };
        let mut fraction = (abs % UNITS_PER_ONE as u128) as u64;
        if fraction != 0 {
            let mut digits = SCALE;
            while fraction.is_multiple_of(10) {
                fraction /= 10;
                digits -= 1;
            }
            for _ in 0..digits {
                push(b'0' + (fraction % 10) as u8);
                fraction /= 10;
            }
            push(b'.');
        }
        let mut whole = abs / UNITS_PER_ONE as u128;
        // 128-bit division is slow: only the digits above u64's range take it.
        while whole > u128::from(u64::MAX) {
            push(b'0' + (whole % 10) as u8);
            whole /= 10;
        }
        let mut whole = whole as u64;
        loop {
            push(b'0' + (whole % 10) as u8);
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        if self.0 < 0 {
            push(b'-');
        }
        std::str::from_utf8(&buffer[start..]).unwrap_or_else(|_| unreachable!("digits are ASCII"))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write_text(&mut [0; TEXT_CAPACITY]))
    }
}

impl Serialize for Quantity {
    /// As a string: JSON readers that parse numbers into floats would otherwise lose digits.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.write_text(&mut [0; TEXT_CAPACITY]))
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal number or a string holding one")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::from_int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Ok(Quantity(i128::from(v) * UNITS_PER_ONE))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        Quantity::from_float(v).map_err(|e| E::custom(format!("value {e}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        v.parse().map_err(|e| E::custom(format!("value {e}")))
    }
}

impl TryFrom<&serde_json::Value> for Quantity {
    type Error = QuantityError;

    fn try_from(value: &serde_json::Value) -> Result<Self, Self::Error> {
        match value {
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Quantity::from_int(i))
                } else if let Some(u) = n.as_u64() {
                    Ok(Quantity(i128::from(u) * UNITS_PER_ONE))
                } else {
                    n.as_f64().map_or(Err(QuantityError::NotANumber), Quantity::from_float)
                }
            }
            serde_json::Value::String(s) => s.parse(),
            _ => Err(QuantityError::NotANumber),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let cases = [
            ("0", "0"),
            ("12", "12"),
            ("12.50", "12.5"),
            ("0.000000001", "0.000000001"),
            ("-3.25", "-3.25"),
            ("007.100", "7.1"),
        ];
        for (input, shown) in cases {
            let q: Quantity = input.parse().unwrap();
            assert_eq!(q.to_string(), shown, "{input}");
        }
    }

    /// The canonical text by string surgery on the integer's digits.
    fn reference_text(units: i128) -> String {
        let digits = format!("{:010}", units.unsigned_abs());
        let (whole, fraction) = digits.split_at(digits.len() - SCALE as usize);
        let (sign, fraction) = (if units < 0 { "-" } else { "" }, fraction.trim_end_matches('0'));
        if fraction.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{fraction}") }
    }

    #[test]
    fn prints_the_whole_range_exactly() {
        let wide = i128::from(u64::MAX) * UNITS_PER_ONE;
        for units in [i128::MAX, i128::MIN, i128::MIN + 1, wide + 5, wide * 10, -wide - 1, 1, -1, 10, 1_000_000_000, 0]
        {
            assert_eq!(Quantity(units).to_string(), reference_text(units), "{units}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_hold_exactly() {
        assert_eq!("1.0000000001".parse::<Quantity>(), Err(QuantityError::TooManyDecimals));
        assert_eq!("1e3".parse::<Quantity>(), Err(QuantityError::NotANumber));
        assert_eq!("".parse::<Quantity>(), Err(QuantityError::NotANumber));
        assert_eq!("1.".parse::<Quantity>(), Err(QuantityError::NotANumber));
        assert_eq!("+1".parse::<Quantity>(), Err(QuantityError::NotANumber));
        assert_eq!("1".repeat(30).parse::<Quantity>(), Err(QuantityError::TooManyDigits));
    }

    #[test]
    fn json_floats_are_read_as_written() {
        let v: serde_json::Value = serde_json::from_str("0.1").unwrap();
        assert_eq!(Quantity::try_from(&v).unwrap(), "0.1".parse().unwrap());
        let v: serde_json::Value = serde_json::from_str("1234.5678").unwrap();
        assert_eq!(Quantity::try_from(&v).unwrap().to_string(), "1234.5678");
        let v: serde_json::Value = serde_json::from_str("0.12345678901234567").unwrap();
        assert_eq!(Quantity::try_from(&v), Err(QuantityError::ImpreciseFloat));
    }

    #[test]
    fn sums_are_exact_where_floats_are_not() {
        let tenth: Quantity = "0.1".parse().unwrap();
        let sum = (0..10).fold(Quantity::ZERO, |acc, _| acc.checked_add(tenth).unwrap());
        assert_eq!(sum, Quantity::from_int(1));
    }
}
