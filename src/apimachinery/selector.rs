//! Kubernetes label selectors, as parsed by `k8s.io/apimachinery/pkg/labels.Parse`.
//!
//! This is a from-scratch implementation of the apimachinery grammar and match
//! semantics (contract §3.1). It is pure logic: no I/O, no allocation beyond the
//! parsed selector itself.
//!
//! Grammar (comma separated, whitespace is a delimiter):
//!
//! ```text
//! <selector>    ::= "" | <requirement> | <requirement> "," <selector>
//! <requirement> ::= [!] KEY
//!                 | KEY ("=" | "==" | "!=") VALUE
//!                 | KEY ("in" | "notin") "(" VALUE { "," VALUE } ")"
//!                 | KEY (">" | "<") INTEGER
//! ```
//!
//! Match semantics follow Go's `Requirement.Matches` exactly:
//! * `=`, `==` and `in` require the key to be present with one of the values;
//! * `!=` and `notin` match when the key is **absent**, or present with another value;
//! * `k` requires presence, `!k` requires absence;
//! * `>` and `<` require the key to be present with a base-10 integer value.
//!
//! Error messages are Go's, word for word, with two deliberate differences:
//! * a NUL byte is rejected; Go's lexer treats it as an end-of-input marker in
//!   the middle of the string, which can silently drop the rest of the selector;
//! * Go prefixes label-key validation errors raised while parsing with the field
//!   path `<nil>`; we use `key`, the path Go itself uses in `NewRequirement`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::str::FromStr;

use super::quantity::parse_go_int;

/// Maximum length, in bytes, of a label name (the part after an optional prefix) and of a value.
const LABEL_MAX_LEN: usize = 63;
/// Maximum length, in bytes, of a DNS-1123 subdomain (the optional key prefix).
const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;

const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

/// The list Go prints when an operator is expected (`binaryOperators` in selector.go).
const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a label selector string could not be parsed.
///
/// The `Display` text is meant to be shown to users (it ends up in a 400
/// `BadRequest` Status) and mirrors the messages of Go's `labels.Parse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A token between requirements was not what the grammar allows.
    #[error("found '{found}', expected: {expected}")]
    Syntax {
        /// The offending token (empty at the end of the input, as in Go).
        found: String,
        /// What the parser expected instead.
        expected: &'static str,
    },
    /// One requirement is malformed or invalid.
    #[error("unable to parse requirement: {0}")]
    Requirement(RequirementError),
    /// The selector contains a NUL byte, which no key or value may contain.
    #[error("found NUL character at byte offset {position}, expected: a label selector")]
    NulCharacter {
        /// Byte offset of the first NUL.
        position: usize,
    },
}

/// Why a single requirement is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// A token inside the requirement was not what the grammar allows.
    #[error("found '{found}', expected: {expected}")]
    Syntax {
        /// The offending token (empty at the end of the input, as in Go).
        found: String,
        /// What the parser expected instead.
        expected: &'static str,
    },
    /// `in` / `notin` not followed by `(` (Go's message has no comma here).
    #[error("found '{found}' expected: '('")]
    ExpectedOpenParen {
        /// The offending token (empty at the end of the input).
        found: String,
    },
    /// Field validation failed (key or values), formatted like Go's
    /// `field.ErrorList.ToAggregate()`: one message, or `[m1, m2, ...]`.
    #[error("{}", aggregate_messages(.0))]
    Invalid(Vec<String>),
}

fn aggregate_messages(msgs: &[String]) -> String {
    match msgs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

// ---------------------------------------------------------------------------
// Operators and requirements
// ---------------------------------------------------------------------------

/// A requirement operator (`k8s.io/apimachinery/pkg/selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `k=v`
    Equals,
    /// `k==v`
    DoubleEquals,
    /// `k!=v`
    NotEquals,
    /// `k in (v1,v2)`
    In,
    /// `k notin (v1,v2)`
    NotIn,
    /// `k`
    Exists,
    /// `!k`
    DoesNotExist,
    /// `k>N`
    GreaterThan,
    /// `k<N`
    LessThan,
}

impl Operator {
    /// Go's string for the operator (`selection.Operator` constants).
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requirement of a selector: a key, an operator and (for most operators) values.
///
/// Values are kept sorted and de-duplicated (Go's parser stores them as a set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Builds and validates a requirement, like Go's `labels.NewRequirement`.
    ///
    /// * `in`/`notin` need at least one value; `=`, `==`, `!=`, `>`, `<` exactly one;
    ///   `exists`/`!` none;
    /// * `>`/`<` values must be base-10 64-bit integers;
    /// * the key must be a valid label key and every value a valid label value.
    ///
    /// All problems are reported at once, like Go's aggregated `field.ErrorList`.
    pub fn new<K, I, V>(key: K, operator: Operator, values: I) -> Result<Self, RequirementError>
    where
        K: Into<String>,
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        let key = key.into();
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        let mut errs: Vec<String> = Vec::new();

        let key_errs = label_key_errors(&key);
        if !key_errs.is_empty() {
            errs.push(invalid_string("key", &key, &key_errs.join("; ")));
        }

        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(invalid_list(
                        "values",
                        &values,
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(invalid_list(
                        "values",
                        &values,
                        "exact-match compatibility requires one single value",
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(invalid_list(
                        "values",
                        &values,
                        "values set must be empty for exists and does not exist",
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(invalid_list(
                        "values",
                        &values,
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if parse_go_int(v).is_none() {
                        errs.push(invalid_string(
                            &format!("values[{i}]"),
                            v,
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
        }

        for (i, v) in values.iter().enumerate() {
            let value_errs = label_value_errors(v);
            if !value_errs.is_empty() {
                errs.push(invalid_string(
                    &format!("values[{i}][{key}]"),
                    v,
                    &value_errs.join("; "),
                ));
            }
        }

        if !errs.is_empty() {
            // Go's ToAggregate drops duplicate messages, keeping the first occurrence.
            let mut seen = BTreeSet::new();
            errs.retain(|m| seen.insert(m.clone()));
            return Err(RequirementError::Invalid(errs));
        }

        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and de-duplicated (empty for `exists` / `!`).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    fn has_value(&self, value: &str) -> bool {
        self.values
            .binary_search_by(|v| v.as_str().cmp(value))
            .is_ok()
    }

    /// Whether this requirement matches the given labels (Go's `Requirement.Matches`).
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => labels
                .get_label(&self.key)
                .is_some_and(|v| self.has_value(v)),
            Operator::NotIn | Operator::NotEquals => labels
                .get_label(&self.key)
                .is_none_or(|v| !self.has_value(v)),
            Operator::Exists => labels.get_label(&self.key).is_some(),
            Operator::DoesNotExist => labels.get_label(&self.key).is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(label_value) = labels.get_label(&self.key).and_then(parse_go_int) else {
                    return false;
                };
                let [bound] = self.values.as_slice() else {
                    return false;
                };
                let Some(bound) = parse_go_int(bound) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    label_value > bound
                } else {
                    label_value < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// Go's `Requirement.String()`: `!k`, `k`, `k=v`, `k==v`, `k!=v`, `k>N`, `k<N`,
    /// `k in (a,b)`, `k notin (a,b)` with values sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::Exists => return f.write_str(&self.key),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
        };
        f.write_str(&self.key)?;
        f.write_str(op)?;
        let set_based = matches!(self.operator, Operator::In | Operator::NotIn);
        if set_based {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set_based {
            f.write_str(")")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Label lookup
// ---------------------------------------------------------------------------

/// Something that can look up a label value by key (Go's `labels.Labels`).
pub trait Labels {
    /// The value of label `key`, if present.
    fn get_label(&self, key: &str) -> Option<&str>;
}

impl<K, V> Labels for BTreeMap<K, V>
where
    K: Borrow<str> + Ord,
    V: AsRef<str>,
{
    fn get_label(&self, key: &str) -> Option<&str> {
        self.get(key).map(AsRef::as_ref)
    }
}

impl<K, V, S> Labels for HashMap<K, V, S>
where
    K: Borrow<str> + Eq + Hash,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get_label(&self, key: &str) -> Option<&str> {
        self.get(key).map(AsRef::as_ref)
    }
}

/// A slice of `(key, value)` pairs; the first pair with the key wins.
impl<K, V> Labels for [(K, V)]
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    fn get_label(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref())
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn get_label(&self, key: &str) -> Option<&str> {
        (**self).get_label(key)
    }
}

// ---------------------------------------------------------------------------
// Selector
// ---------------------------------------------------------------------------

/// A parsed label selector: the AND of its requirements, sorted by key.
///
/// The empty selector (also `Default`) matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set (Go's `labels.Everything()`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Parses a selector string; see [`parse`].
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        parse(s)
    }

    /// Builds a selector from requirements, sorted (stably) by key like Go's `Add`.
    pub fn from_requirements<I: IntoIterator<Item = Requirement>>(requirements: I) -> Self {
        let mut requirements: Vec<Requirement> = requirements.into_iter().collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Selector { requirements }
    }

    /// Whether the selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether every requirement matches the labels.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// When the selector consists only of exact-match requirements — `k=v`,
    /// `k==v`, or the equivalent single-valued `k in (v)` — returns them as a
    /// key → value map (used to turn a selector into Datadog tags). Returns
    /// `Some(empty)` for the empty selector, and `None` when any other operator is
    /// used or the same key is required to have two different values.
    pub fn equality_labels(&self) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for r in &self.requirements {
            let value = match (r.operator, r.values.as_slice()) {
                (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => v,
                _ => return None,
            };
            match out.get(&r.key) {
                None => {
                    out.insert(r.key.clone(), value.clone());
                }
                Some(existing) if existing == value => {}
                Some(_) => return None,
            }
        }
        Some(out)
    }

    /// Go's `RequiresExactMatch`: looks at the first requirement on `key`; if it is
    /// `=`, `==` or `in` with a single value, returns that value.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for Selector {
    /// Go's canonical `String()`: requirements sorted by key, joined by `,`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(r, f)?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses a label selector with the grammar of Go's `labels.Parse`.
///
/// The empty string (and whitespace only) yields the empty selector, which
/// matches everything.
pub fn parse(s: &str) -> Result<Selector, SelectorError> {
    if let Some(position) = s.bytes().position(|b| b == 0) {
        return Err(SelectorError::NulCharacter { position });
    }
    let mut parser = Parser {
        items: lex(s),
        position: 0,
    };
    let mut requirements = parser.parse()?;
    // Stable sort: Go sorts by key only; requirements on the same key keep input order.
    requirements.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Selector { requirements })
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    token: Token,
    literal: &'a str,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the input into tokens, ending with exactly one `EndOfString`.
///
/// Identifiers are maximal runs of bytes that are neither whitespace nor one of
/// `=!(),><`; `in` and `notin` are keywords. Operators take the longest match
/// (`==`, `!=` before `=`, `!`). Only ASCII bytes delimit, so slicing is always
/// on a char boundary.
fn lex(s: &str) -> Vec<Item<'_>> {
    let bytes = s.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        let start = pos;
        let Some(&first) = bytes.get(pos) else {
            items.push(Item {
                token: Token::EndOfString,
                literal: "",
            });
            return items;
        };
        let token = if is_special(first) {
            let two = bytes.get(pos + 1) == Some(&b'=') && matches!(first, b'=' | b'!');
            if two {
                pos += 2;
                if first == b'=' {
                    Token::DoubleEquals
                } else {
                    Token::NotEquals
                }
            } else {
                pos += 1;
                match first {
                    b'=' => Token::Equals,
                    b'!' => Token::DoesNotExist,
                    b'(' => Token::OpenPar,
                    b')' => Token::ClosedPar,
                    b',' => Token::Comma,
                    b'>' => Token::GreaterThan,
                    _ => Token::LessThan,
                }
            }
        } else {
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_whitespace(bytes[pos]) {
                pos += 1;
            }
            match &s[start..pos] {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier,
            }
        };
        items.push(Item {
            token,
            literal: &s[start..pos],
        });
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// In `Values` context the keywords `in` / `notin` are plain identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    items: Vec<Item<'a>>,
    position: usize,
}

impl<'a> Parser<'a> {
    fn item(&self, index: usize) -> Item<'a> {
        // `lex` always ends with EndOfString; never index past it.
        self.items
            .get(index)
            .or_else(|| self.items.last())
            .copied()
            .unwrap_or(Item {
                token: Token::EndOfString,
                literal: "",
            })
    }

    fn lookahead(&self, context: Context) -> (Token, &'a str) {
        let item = self.item(self.position);
        (contextualize(item.token, context), item.literal)
    }

    fn consume(&mut self, context: Context) -> (Token, &'a str) {
        let item = self.item(self.position);
        if self.position < self.items.len() {
            self.position += 1;
        }
        (contextualize(item.token, context), item.literal)
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (token, literal) = self.lookahead(Context::Values);
            match token {
                Token::Identifier | Token::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(SelectorError::Requirement)?;
                    requirements.push(r);
                    let (token, literal) = self.consume(Context::Values);
                    match token {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (next, next_literal) = self.lookahead(Context::Values);
                            if next != Token::Identifier && next != Token::DoesNotExist {
                                return Err(SelectorError::Syntax {
                                    found: next_literal.to_owned(),
                                    expected: "identifier after ','",
                                });
                            }
                        }
                        _ => {
                            return Err(SelectorError::Syntax {
                                found: literal.to_owned(),
                                expected: "',' or 'end of string'",
                            });
                        }
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => {
                    return Err(SelectorError::Syntax {
                        found: literal.to_owned(),
                        expected: "!, identifier, or 'end of string'",
                    });
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, RequirementError> {
        let (key, unary) = self.parse_key_and_infer_operator()?;
        if let Some(op) = unary {
            return Requirement::new(key, op, Vec::<String>::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(key, operator, values)
    }

    /// Parses `[!] KEY`; infers `exists` when the key is followed by `,` or the end.
    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(&'a str, Option<Operator>), RequirementError> {
        let (mut token, mut literal) = self.consume(Context::Values);
        let negated = token == Token::DoesNotExist;
        if negated {
            (token, literal) = self.consume(Context::Values);
        }
        if token != Token::Identifier {
            return Err(syntax(literal, "identifier"));
        }
        let key_errs = label_key_errors(literal);
        if !key_errs.is_empty() {
            return Err(RequirementError::Invalid(vec![invalid_string(
                "key",
                literal,
                &key_errs.join("; "),
            )]));
        }
        if negated {
            return Ok((literal, Some(Operator::DoesNotExist)));
        }
        let (next, _) = self.lookahead(Context::Values);
        if matches!(next, Token::EndOfString | Token::Comma) {
            return Ok((literal, Some(Operator::Exists)));
        }
        Ok((literal, None))
    }

    fn parse_operator(&mut self) -> Result<Operator, RequirementError> {
        let (token, literal) = self.consume(Context::KeyAndOperator);
        match token {
            Token::In => Ok(Operator::In),
            Token::Equals => Ok(Operator::Equals),
            Token::DoubleEquals => Ok(Operator::DoubleEquals),
            Token::GreaterThan => Ok(Operator::GreaterThan),
            Token::LessThan => Ok(Operator::LessThan),
            Token::NotIn => Ok(Operator::NotIn),
            Token::NotEquals => Ok(Operator::NotEquals),
            _ => Err(syntax(literal, BINARY_OPERATORS)),
        }
    }

    /// Parses `( v1, v2, ... )`; empty entries mean the empty value, `()` is `("")`.
    fn parse_values(&mut self) -> Result<Vec<String>, RequirementError> {
        let (token, literal) = self.consume(Context::Values);
        if token != Token::OpenPar {
            return Err(RequirementError::ExpectedOpenParen {
                found: literal.to_owned(),
            });
        }
        let (token, literal) = self.lookahead(Context::Values);
        match token {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let (closing, _) = self.consume(Context::Values);
                if closing != Token::ClosedPar {
                    return Err(syntax(literal, "')'"));
                }
                Ok(values.into_iter().map(str::to_owned).collect())
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(syntax(literal, "',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<&'a str>, RequirementError> {
        let mut set = BTreeSet::new();
        loop {
            let (token, literal) = self.consume(Context::Values);
            match token {
                Token::Identifier => {
                    set.insert(literal);
                    let (next, next_literal) = self.lookahead(Context::Values);
                    match next {
                        Token::Comma => {}
                        Token::ClosedPar => return Ok(set),
                        _ => return Err(syntax(next_literal, "',' or ')'")),
                    }
                }
                Token::Comma => {
                    if set.is_empty() {
                        set.insert(""); // "(,"
                    }
                    let (next, _) = self.lookahead(Context::Values);
                    if next == Token::ClosedPar {
                        set.insert(""); // ",)"
                        return Ok(set);
                    }
                    if next == Token::Comma {
                        set.insert(""); // ",,"
                    }
                }
                _ => return Err(syntax(literal, "',', or identifier")),
            }
        }
    }

    /// Parses the single value of `=`, `==`, `!=`, `>`, `<` (possibly empty).
    fn parse_exact_value(&mut self) -> Result<Vec<String>, RequirementError> {
        let (token, _) = self.lookahead(Context::Values);
        if matches!(token, Token::EndOfString | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let (token, literal) = self.consume(Context::Values);
        if token == Token::Identifier {
            Ok(vec![literal.to_owned()])
        } else {
            Err(syntax(literal, "identifier"))
        }
    }
}

fn contextualize(token: Token, context: Context) -> Token {
    match (context, token) {
        (Context::Values, Token::In | Token::NotIn) => Token::Identifier,
        _ => token,
    }
}

fn syntax(found: &str, expected: &'static str) -> RequirementError {
    RequirementError::Syntax {
        found: found.to_owned(),
        expected,
    }
}

// ---------------------------------------------------------------------------
// Validation (k8s.io/apimachinery/pkg/api/validate/content)
// ---------------------------------------------------------------------------

/// Go's `RegexError`: message, examples and the regex used.
fn regex_error(msg: &str, re: &str, examples: &[&str]) -> String {
    let mut out = String::from(msg);
    if examples.is_empty() {
        out.push_str(" (regex used for validation is '");
    } else {
        out.push_str(" (e.g. ");
        for (i, example) in examples.iter().enumerate() {
            if i > 0 {
                out.push_str(" or ");
            }
            out.push('\'');
            out.push_str(example);
            out.push_str("', ");
        }
        out.push_str("regex used for validation is '");
    }
    out.push_str(re);
    out.push_str("')");
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} bytes")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
            }
            _ => false,
        }
    })
}

fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LEN));
    }
    if !is_dns1123_subdomain(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Go's `content.IsLabelKey`: `[prefix/]name`.
fn label_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    LABEL_KEY_ERR_MSG,
                    LABEL_KEY_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > LABEL_MAX_LEN {
        errs.push(format!("name part {}", max_len_error(LABEL_MAX_LEN)));
    }
    if !is_label_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_ERR_MSG,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Go's `IsValidLabelValue`: empty, or a label name of at most 63 bytes.
fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX_LEN {
        errs.push(max_len_error(LABEL_MAX_LEN));
    }
    if !value.is_empty() && !is_label_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `field.Invalid(path, value, detail).Error()` for a string bad value (Go `%q`).
fn invalid_string(field: &str, value: &str, detail: &str) -> String {
    format!(
        "{field}: Invalid value: {}: {detail}",
        super::goquote::go_quote(value)
    )
}

/// `field.Invalid(path, values, detail).Error()` for a `[]string` bad value (JSON).
fn invalid_list(field: &str, values: &[String], detail: &str) -> String {
    let rendered = serde_json::to_string(values).unwrap_or_else(|_| String::from("[]"));
    format!("{field}: Invalid value: {rendered}: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
        Requirement::new(key, op, values.iter().copied()).expect("valid requirement")
    }

    const VALUE_REGEX_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
    const NAME_REGEX_ERR: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    const PREFIX_REGEX_ERR: &str = "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

    /// Go's TestSelectorParse: good strings re-stringify to themselves minus spaces.
    #[test]
    fn go_selector_parse_restring() {
        for input in [
            "x=a,y=b,z=c",
            "",
            "x!=a,y=b",
            "x=",
            "x= ",
            "x=,z= ",
            "x= ,z= ",
            "!x",
            "x>1",
            "x>1,z<5",
        ] {
            let sel = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.to_string(), input.replace(' ', ""), "{input:?}");
        }
        for input in ["x=a||y=b", "x==a==b", "!x=a", "x<a"] {
            assert!(parse(input).is_err(), "{input:?} should fail");
        }
    }

    #[test]
    fn deterministic_parse() {
        assert_eq!(
            parse("x=a,a=x").unwrap().to_string(),
            parse("a=x,x=a").unwrap().to_string()
        );
        assert_eq!(parse("x=a,a=x").unwrap(), parse("a=x,x=a").unwrap());
    }

    /// Go's TestSetSelectorParser plus extra cases: input → canonical string.
    #[test]
    fn parse_to_canonical() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("   ", ""),
            ("\t\r\n", ""),
            ("\rx", "x"),
            (
                "this-is-a-dns.domain.com/key-with-dash",
                "this-is-a-dns.domain.com/key-with-dash",
            ),
            (
                "this-is-another-dns.domain.com/key-with-dash in (so,what)",
                "this-is-another-dns.domain.com/key-with-dash in (so,what)",
            ),
            (
                "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
                "0.1.2.domain/99 notin (10.10.100.1,tick.tack.clock)",
            ),
            ("foo  in\t (abc)", "foo in (abc)"),
            ("x notin\n (abc)", "x notin (abc)"),
            ("x  notin\t\t\t(abc,def)", "x notin (abc,def)"),
            ("x in (abc,def)", "x in (abc,def)"),
            ("x in (def,abc)", "x in (abc,def)"),
            ("x in (abc,)", "x in (,abc)"),
            ("x in (abc,abc)", "x in (abc)"),
            ("x in ()", "x in ()"),
            ("x in (a,,)", "x in (,a)"),
            ("x in (a,,,)", "x in (,a)"),
            ("x in (a,,,,,,)", "x in (,a)"),
            ("x in (a,,a,,a,,a,,)", "x in (,a)"),
            ("x in (,a)", "x in (,a)"),
            ("x in (,)", "x in ()"),
            (
                "x notin (abc,,def),bar,z in (),w",
                "bar,w,x notin (,abc,def),z in ()",
            ),
            ("x,y in (a)", "x,y in (a)"),
            ("y in (a),x", "x,y in (a)"),
            ("x=a", "x=a"),
            ("x==a", "x==a"),
            (" x  ==  a ", "x==a"),
            ("x>1", "x>1"),
            ("x<7", "x<7"),
            ("x>01", "x>01"),
            ("x=a,y!=b", "x=a,y!=b"),
            ("x=a,y!=b,z in (h,i,j)", "x=a,y!=b,z in (h,i,j)"),
            ("x notin ( )", "x notin ()"),
            ("x notin (, a)", "x notin (,a)"),
            ("a ", "a"),
            ("a in (x,y,notin, z,in)", "a in (in,notin,x,y,z)"),
            ("notin=in", "notin=in"),
            ("in in (in)", "in in (in)"),
            ("in", "in"),
            ("!in", "!in"),
            ("notin notin (notin)", "notin notin (notin)"),
            ("x in(a)", "x in (a)"),
            ("x notin(a,b)", "x notin (a,b)"),
            ("x!=", "x!="),
            ("x==", "x=="),
            ("x=,y", "x=,y"),
            ("x=a,y", "x=a,y"),
            ("z=1,a=2", "a=2,z=1"),
            ("!a,a", "!a,a"),
            // Same key: the sort is stable, input order kept.
            ("x=a,x!=b", "x=a,x!=b"),
            ("x!=b,x=a", "x!=b,x=a"),
            ("b,a=1,b=2", "a=1,b,b=2"),
            (
                "example.com/MyName=My.value_1-x",
                "example.com/MyName=My.value_1-x",
            ),
            ("A=B", "A=B"),
            ("1=2", "1=2"),
            ("a.b-c_d=e", "a.b-c_d=e"),
        ];
        for (input, want) in cases {
            let sel = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.to_string(), *want, "{input:?}");
            // Canonical output re-parses to the same selector.
            assert_eq!(parse(want).unwrap(), sel, "{input:?}");
        }
    }

    #[test]
    fn parse_structure() {
        let sel = parse("x notin (abc,,def),bar,z in (),w").unwrap();
        assert_eq!(
            sel.requirements(),
            &[
                req("bar", Operator::Exists, &[]),
                req("w", Operator::Exists, &[]),
                req("x", Operator::NotIn, &["", "abc", "def"]),
                req("z", Operator::In, &[""]),
            ]
        );
        let sel = parse("!x,y>5,z<-0").unwrap_err();
        assert!(matches!(sel, SelectorError::Requirement(_)));
        let sel = parse("!x,y>5").unwrap();
        assert_eq!(sel.requirements()[0].operator(), Operator::DoesNotExist);
        assert_eq!(sel.requirements()[1].operator(), Operator::GreaterThan);
        assert_eq!(sel.requirements()[1].values(), &["5".to_owned()]);
        assert_eq!(sel.requirements()[1].key(), "y");
        let sel = parse("x==a").unwrap();
        assert_eq!(sel.requirements()[0].operator(), Operator::DoubleEquals);
        assert_ne!(parse("x==a").unwrap(), parse("x=a").unwrap());
    }

    /// Exact error messages (Go's, with the `<nil>` key path replaced by `key`).
    #[test]
    fn parse_errors() {
        let value_err = |field: &str, v: &str| {
            format!(
                "unable to parse requirement: {field}: Invalid value: \"{v}\": {VALUE_REGEX_ERR}"
            )
        };
        let cases: Vec<(&str, String)> = vec![
            ("x=a||y=b", value_err("values[0][x]", "a||y")),
            (
                "x==a==b",
                "found '==', expected: ',' or 'end of string'".into(),
            ),
            ("!x=a", "found '=', expected: ',' or 'end of string'".into()),
            (
                "x<a",
                "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, the value must be an integer".into(),
            ),
            (
                "x>",
                "unable to parse requirement: values[0]: Invalid value: \"\": for 'Gt', 'Lt' operators, the value must be an integer".into(),
            ),
            (
                "x>99999999999999999999",
                "unable to parse requirement: values[0]: Invalid value: \"99999999999999999999\": for 'Gt', 'Lt' operators, the value must be an integer".into(),
            ),
            // Negative numbers parse as integers but are not valid label values.
            ("x>-1", value_err("values[0][x]", "-1")),
            ("x<+1", value_err("values[0][x]", "+1")),
            (
                "x>a-",
                format!(
                    "unable to parse requirement: [values[0]: Invalid value: \"a-\": for 'Gt', 'Lt' operators, the value must be an integer, values[0][x]: Invalid value: \"a-\": {VALUE_REGEX_ERR}]"
                ),
            ),
            (
                "x>=1",
                "unable to parse requirement: found '=', expected: identifier".into(),
            ),
            (
                "x,,y",
                "found ',', expected: identifier after ','".into(),
            ),
            (
                ",x,y",
                "found ',', expected: !, identifier, or 'end of string'".into(),
            ),
            (
                " , ",
                "found ',', expected: !, identifier, or 'end of string'".into(),
            ),
            (
                "x nott in (y)",
                "unable to parse requirement: found 'nott', expected: in, notin, =, ==, !=, gt, lt".into(),
            ),
            (
                "a in (xyz),",
                "found '', expected: identifier after ','".into(),
            ),
            ("x=a,", "found '', expected: identifier after ','".into()),
            ("x=a,)", "found ')', expected: identifier after ','".into()),
            (
                "a in (xyz)b notin ()",
                "found 'b', expected: ',' or 'end of string'".into(),
            ),
            (
                "a in (xyz abc)",
                "unable to parse requirement: found 'abc', expected: ',' or ')'".into(),
            ),
            (
                "a in (xyz",
                "unable to parse requirement: found '', expected: ',' or ')'".into(),
            ),
            (
                "a notin(",
                "unable to parse requirement: found '', expected: ',', ')' or identifier".into(),
            ),
            (
                "a in (=)",
                "unable to parse requirement: found '=', expected: ',', ')' or identifier".into(),
            ),
            (
                "a in (x,=)",
                "unable to parse requirement: found '=', expected: ',', or identifier".into(),
            ),
            (
                "a (",
                "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt".into(),
            ),
            (
                "a !b",
                "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt".into(),
            ),
            (
                "(",
                "found '(', expected: !, identifier, or 'end of string'".into(),
            ),
            (
                "=a",
                "found '=', expected: !, identifier, or 'end of string'".into(),
            ),
            (
                "x=(",
                "unable to parse requirement: found '(', expected: identifier".into(),
            ),
            (
                "x in a",
                "unable to parse requirement: found 'a' expected: '('".into(),
            ),
            (
                "x in",
                "unable to parse requirement: found '' expected: '('".into(),
            ),
            (
                "!",
                "unable to parse requirement: found '', expected: identifier".into(),
            ),
            (
                "!!x",
                "unable to parse requirement: found '!', expected: identifier".into(),
            ),
            (
                "!=x",
                "found '!=', expected: !, identifier, or 'end of string'".into(),
            ),
            ("x=a b", "found 'b', expected: ',' or 'end of string'".into()),
            ("x y", "unable to parse requirement: found 'y', expected: in, notin, =, ==, !=, gt, lt".into()),
            ("x=-a", value_err("values[0][x]", "-a")),
            ("x=a-", value_err("values[0][x]", "a-")),
            ("x=a/b", value_err("values[0][x]", "a/b")),
            ("x=ä", value_err("values[0][x]", "ä")),
            ("x in (ok,-bad)", value_err("values[0][x]", "-bad")),
            // Index into the sorted, de-duplicated value set, as in Go.
            ("x in (ok,bad-)", value_err("values[0][x]", "bad-")),
            ("x in (zz-,a,a)", value_err("values[1][x]", "zz-")),
            (
                "x=\"a\"",
                format!(
                    "unable to parse requirement: values[0][x]: Invalid value: \"\\\"a\\\"\": {VALUE_REGEX_ERR}"
                ),
            ),
            (
                &*Box::leak(format!("x={}", "a".repeat(64)).into_boxed_str()),
                format!(
                    "unable to parse requirement: values[0][x]: Invalid value: \"{}\": must be no more than 63 bytes",
                    "a".repeat(64)
                ),
            ),
            (
                "Foo_/bar",
                format!(
                    "unable to parse requirement: key: Invalid value: \"Foo_/bar\": {PREFIX_REGEX_ERR}"
                ),
            ),
            (
                "/bar",
                "unable to parse requirement: key: Invalid value: \"/bar\": prefix part must be non-empty".into(),
            ),
            (
                "foo/",
                format!(
                    "unable to parse requirement: key: Invalid value: \"foo/\": name part must be non-empty; {NAME_REGEX_ERR}"
                ),
            ),
            (
                "a/b/c=d",
                "unable to parse requirement: key: Invalid value: \"a/b/c\": a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".into(),
            ),
            (
                "-x",
                format!("unable to parse requirement: key: Invalid value: \"-x\": {NAME_REGEX_ERR}"),
            ),
            (
                "!x_",
                format!("unable to parse requirement: key: Invalid value: \"x_\": {NAME_REGEX_ERR}"),
            ),
            (
                "x.y=_",
                value_err("values[0][x.y]", "_"),
            ),
            (
                &*Box::leak(format!("{}=1", "k".repeat(64)).into_boxed_str()),
                format!(
                    "unable to parse requirement: key: Invalid value: \"{}\": name part must be no more than 63 bytes",
                    "k".repeat(64)
                ),
            ),
            (
                &*Box::leak(format!("{}/k", "p".repeat(254)).into_boxed_str()),
                format!(
                    "unable to parse requirement: key: Invalid value: \"{}/k\": prefix part must be no more than 253 bytes",
                    "p".repeat(254)
                ),
            ),
            (
                "Example.com/k",
                format!(
                    "unable to parse requirement: key: Invalid value: \"Example.com/k\": {PREFIX_REGEX_ERR}"
                ),
            ),
            (
                "a..b/k",
                format!("unable to parse requirement: key: Invalid value: \"a..b/k\": {PREFIX_REGEX_ERR}"),
            ),
            (
                "x=a\0",
                "found NUL character at byte offset 3, expected: a label selector".into(),
            ),
            (
                "\0garbage",
                "found NUL character at byte offset 0, expected: a label selector".into(),
            ),
        ];
        for (input, want) in cases {
            let err = parse(input).expect_err(input);
            assert_eq!(err.to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn key_and_value_limits() {
        // 63-byte names and values, and a 253-byte prefix, are fine.
        let name = "n".repeat(63);
        let value = "v".repeat(63);
        let prefix = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        assert_eq!(prefix.len(), 253);
        let input = format!("{prefix}/{name}={value}");
        let sel = parse(&input).unwrap();
        assert_eq!(sel.to_string(), input);
        // Per-label length is not checked for the prefix (Go does not either).
        assert!(parse(&format!("{}/x", "a".repeat(100))).is_ok());
        // Empty values are fine everywhere except > and <.
        assert!(parse("x=,y!=,z in (),w notin ()").is_ok());
    }

    /// Go's TestSelectorMatches, TestRequirementSelectorMatching and more.
    #[test]
    fn matches() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("", &[("x", "y")], true),
            ("", &[], true),
            ("x=y", &[("x", "y")], true),
            ("x=y,z=w", &[("x", "y"), ("z", "w")], true),
            ("x!=y,z!=w", &[("x", "z"), ("z", "a")], true),
            ("notin=in", &[("notin", "in")], true),
            ("x", &[("x", "z")], true),
            ("!x", &[("y", "z")], true),
            ("x>1", &[("x", "2")], true),
            ("x<1", &[("x", "0")], true),
            ("x=z", &[], false),
            ("x=y", &[("x", "z")], false),
            ("x=y,z=w", &[("x", "w"), ("z", "w")], false),
            ("x!=y,z!=w", &[("x", "z"), ("z", "w")], false),
            ("x", &[("y", "z")], false),
            ("!x", &[("x", "z")], false),
            ("x>1", &[("x", "0")], false),
            ("x<1", &[("x", "2")], false),
            ("foo=bar", &[("foo", "bar"), ("baz", "blah")], true),
            ("baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
            ("foo=bar,baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
            ("foo=blah", &[("foo", "bar"), ("baz", "blah")], false),
            ("baz=bar", &[("foo", "bar"), ("baz", "blah")], false),
            (
                "foo=bar,foobar=bar,baz=blah",
                &[("foo", "bar"), ("baz", "blah")],
                false,
            ),
            (
                "x in (foo),y notin (alpha)",
                &[("x", "foo"), ("y", "baz")],
                true,
            ),
            (
                "x in (foo),y in (alpha)",
                &[("x", "foo"), ("y", "baz")],
                false,
            ),
            ("x notin (),y", &[("y", "")], true),
            ("!x,y", &[("y", "")], true),
            ("x notin (),!y", &[("y", "")], false),
            ("x in ()", &[("y", "baz")], false),
            ("z>1", &[("z", "2")], true),
            ("z>1", &[("z", "v2")], false),
            // Absent keys: != and notin match, = / == / in / > / < do not.
            ("x!=a", &[], true),
            ("x!=a", &[("x", "a")], false),
            ("x!=a", &[("x", "b")], true),
            ("x notin (a,b)", &[], true),
            ("x notin (a,b)", &[("x", "b")], false),
            ("x notin (a,b)", &[("x", "c")], true),
            ("x in (a,b)", &[], false),
            ("x in (a,b)", &[("x", "b")], true),
            ("x==a", &[], false),
            ("x==a", &[("x", "a")], true),
            ("x>1", &[], false),
            ("x<1", &[], false),
            // Empty values.
            ("x=", &[("x", "")], true),
            ("x=", &[], false),
            ("x=", &[("x", "a")], false),
            ("x!=", &[], true),
            ("x!=", &[("x", "")], false),
            ("x!=", &[("x", "a")], true),
            ("x in ()", &[("x", "")], true),
            ("x in ()", &[], false),
            ("x in (,a)", &[("x", "")], true),
            ("x in (,a)", &[("x", "a")], true),
            ("x notin ()", &[], true),
            ("x notin ()", &[("x", "")], false),
            ("x", &[("x", "")], true),
            ("!x", &[("x", "")], false),
            // Integer comparisons use Go's ParseInt on the label value.
            ("x>1", &[("x", "1")], false),
            ("x>1", &[("x", "+2")], true),
            ("x<1", &[("x", "-5")], true),
            ("x<1", &[("x", "-9223372036854775808")], true),
            ("x>1", &[("x", "9223372036854775807")], true),
            ("x>1", &[("x", "9223372036854775808")], false),
            ("x<1", &[("x", "9223372036854775808")], false),
            ("x>1", &[("x", " 2")], false),
            ("x>1", &[("x", "2.5")], false),
            ("x>1", &[("x", "1_0")], false),
            ("x>1", &[("x", "")], false),
            ("x<10", &[("x", "09")], true),
            ("x>01", &[("x", "2")], true),
            ("x>0,x<10", &[("x", "5")], true),
            ("x>0,x<10", &[("x", "10")], false),
            // Case-sensitive keys and values.
            ("X=a", &[("x", "a")], false),
            ("x=A", &[("x", "a")], false),
            ("x=a,y", &[("x", "a")], false),
            ("x=a,y", &[("x", "a"), ("y", "anything")], true),
        ];
        for (selector, set, want) in cases {
            let sel = parse(selector).unwrap_or_else(|e| panic!("{selector:?}: {e}"));
            let map = labels(set);
            assert_eq!(sel.matches(&map), *want, "{selector:?} on {set:?}");
            // Same answer through HashMap, slices of pairs and references.
            let hash: HashMap<&str, &str> = set.iter().copied().collect();
            assert_eq!(
                sel.matches(&hash),
                *want,
                "{selector:?} on {set:?} (HashMap)"
            );
            assert_eq!(sel.matches(*set), *want, "{selector:?} on {set:?} (slice)");
            assert_eq!(sel.matches(&&map), *want, "{selector:?} on {set:?} (&&)");
        }
    }

    #[test]
    fn everything_and_empty() {
        let everything = Selector::everything();
        assert!(everything.is_empty());
        assert!(everything.matches(&labels(&[("x", "y")])));
        assert!(everything.matches(&labels(&[])));
        assert_eq!(everything.to_string(), "");
        assert_eq!(parse("").unwrap(), everything);
        assert_eq!(Selector::default(), everything);
        assert!(!parse("x").unwrap().is_empty());
        assert_eq!("x=y".parse::<Selector>().unwrap(), parse("x=y").unwrap());
        assert_eq!(Selector::parse("x=y").unwrap(), parse("x=y").unwrap());
    }

    #[test]
    fn equality_labels() {
        let map = |pairs: &[(&str, &str)]| Some(labels(pairs));
        let cases: &[(&str, Option<BTreeMap<String, String>>)] = &[
            ("", map(&[])),
            ("a=1", map(&[("a", "1")])),
            ("a=1,b==2", map(&[("a", "1"), ("b", "2")])),
            ("b==2,a=1", map(&[("a", "1"), ("b", "2")])),
            ("a in (1)", map(&[("a", "1")])),
            ("a=", map(&[("a", "")])),
            ("a in ()", map(&[("a", "")])),
            ("a=1,a=1", map(&[("a", "1")])),
            ("a=1,a in (1)", map(&[("a", "1")])),
            ("a=1,a=2", None),
            ("a in (1,2)", None),
            ("a!=1", None),
            ("a notin (1)", None),
            ("a", None),
            ("!a", None),
            ("a>1", None),
            ("a<1", None),
            ("a=1,b", None),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(input).unwrap().equality_labels(), want, "{input:?}");
        }
    }

    /// Go's TestRequiresExactMatch.
    #[test]
    fn requires_exact_match() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("", "foo", None),
            ("foo=bar", "foo", Some("bar")),
            ("foo==bar", "foo", Some("bar")),
            ("foo in (bar)", "foo", Some("bar")),
            ("foo in (bar,baz)", "foo", None),
            ("foo!=bar", "foo", None),
            ("foo=bar", "baz", None),
            ("foo=bar,baz=qux", "baz", Some("qux")),
            ("foo", "foo", None),
        ];
        for (input, key, want) in cases {
            let sel = parse(input).unwrap();
            assert_eq!(sel.requires_exact_match(key), *want, "{input:?} {key}");
        }
    }

    /// Go's TestRequirementConstructor.
    #[test]
    fn requirement_constructor() {
        let none: [&str; 0] = [];
        let cases: Vec<(String, Operator, Vec<&str>, Option<String>)> = vec![
            (
                "x1".into(),
                Operator::In,
                vec![],
                Some("values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty".into()),
            ),
            (
                "x2".into(),
                Operator::NotIn,
                vec![],
                Some("values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty".into()),
            ),
            ("x3".into(), Operator::In, vec!["foo"], None),
            ("x4".into(), Operator::NotIn, vec!["foo"], None),
            (
                "x5".into(),
                Operator::Equals,
                vec!["bar", "foo"],
                Some("values: Invalid value: [\"bar\",\"foo\"]: exact-match compatibility requires one single value".into()),
            ),
            (
                "x5b".into(),
                Operator::Equals,
                vec!["a", "a"],
                Some("values: Invalid value: [\"a\",\"a\"]: exact-match compatibility requires one single value".into()),
            ),
            ("x6".into(), Operator::Exists, vec![], None),
            ("x7".into(), Operator::DoesNotExist, vec![], None),
            (
                "x8".into(),
                Operator::Exists,
                vec!["foo"],
                Some("values: Invalid value: [\"foo\"]: values set must be empty for exists and does not exist".into()),
            ),
            ("x11".into(), Operator::GreaterThan, vec!["1"], None),
            ("x12".into(), Operator::LessThan, vec!["6"], None),
            (
                "x13".into(),
                Operator::GreaterThan,
                vec![],
                Some("values: Invalid value: []: for 'Gt', 'Lt' operators, exactly one value is required".into()),
            ),
            (
                "x14".into(),
                Operator::GreaterThan,
                vec!["bar"],
                Some("values[0]: Invalid value: \"bar\": for 'Gt', 'Lt' operators, the value must be an integer".into()),
            ),
            (
                "x15".into(),
                Operator::LessThan,
                vec!["bar"],
                Some("values[0]: Invalid value: \"bar\": for 'Gt', 'Lt' operators, the value must be an integer".into()),
            ),
            (
                "a".repeat(254),
                Operator::Exists,
                vec![],
                Some(format!(
                    "key: Invalid value: \"{}\": name part must be no more than 63 bytes",
                    "a".repeat(254)
                )),
            ),
            (
                "x17".into(),
                Operator::Equals,
                vec!["a b"],
                Some(format!("values[0][x17]: Invalid value: \"a b\": {VALUE_REGEX_ERR}")),
            ),
            (
                "-bad".into(),
                Operator::In,
                vec![],
                Some(format!(
                    "[key: Invalid value: \"-bad\": {NAME_REGEX_ERR}, values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty]"
                )),
            ),
        ];
        for (key, op, values, want) in cases {
            let got = Requirement::new(key.clone(), op, values.clone());
            match want {
                None => {
                    let r = got.unwrap_or_else(|e| panic!("{key} {op}: {e}"));
                    assert_eq!(r.key(), key);
                    assert_eq!(r.operator(), op);
                }
                Some(msg) => {
                    assert_eq!(got.unwrap_err().to_string(), msg, "{key} {op} {values:?}");
                }
            }
        }
        // Value for the x16 case from Go: a 254-byte value.
        let long = "a".repeat(254);
        let err = Requirement::new("x16", Operator::Equals, [long.as_str()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("values[0][x16]: Invalid value: \"{long}\": must be no more than 63 bytes")
        );
        // Values are sorted and de-duplicated for set operators.
        let r = Requirement::new("k", Operator::In, ["b", "a", "b"]).unwrap();
        assert_eq!(r.values(), &["a".to_owned(), "b".to_owned()]);
        assert_eq!(r.to_string(), "k in (a,b)");
        assert!(Requirement::new("k", Operator::Exists, none).is_ok());
    }

    /// Go's TestToString.
    #[test]
    fn to_string() {
        let cases: Vec<(Vec<Requirement>, &str)> = vec![
            (
                vec![
                    req("x", Operator::In, &["abc", "def"]),
                    req("y", Operator::NotIn, &["jkl"]),
                    req("z", Operator::Exists, &[]),
                ],
                "x in (abc,def),y notin (jkl),z",
            ),
            (
                vec![
                    req("x", Operator::NotIn, &["abc", "def"]),
                    req("y", Operator::NotEquals, &["jkl"]),
                    req("z", Operator::DoesNotExist, &[]),
                ],
                "x notin (abc,def),y!=jkl,!z",
            ),
            (
                vec![
                    req("x", Operator::NotIn, &["abc"]),
                    req("y", Operator::In, &["jkl", "mno"]),
                    req("z", Operator::NotIn, &[""]),
                ],
                "x notin (abc),y in (jkl,mno),z notin ()",
            ),
            (
                vec![
                    req("x", Operator::Equals, &["abc"]),
                    req("y", Operator::DoubleEquals, &["jkl"]),
                    req("z", Operator::NotEquals, &["a"]),
                    req("z", Operator::Exists, &[]),
                ],
                "x=abc,y==jkl,z!=a,z",
            ),
            (
                vec![
                    req("x", Operator::GreaterThan, &["2"]),
                    req("y", Operator::LessThan, &["8"]),
                    req("z", Operator::Exists, &[]),
                ],
                "x>2,y<8,z",
            ),
            (
                vec![
                    req("z", Operator::Exists, &[]),
                    req("y", Operator::In, &["b", "a"]),
                ],
                "y in (a,b),z",
            ),
        ];
        for (reqs, want) in cases {
            let sel = Selector::from_requirements(reqs);
            assert_eq!(sel.to_string(), want);
            assert_eq!(parse(want).unwrap(), sel);
        }
    }

    #[test]
    fn lexer_tokens() {
        let tokens = |s: &str| lex(s).into_iter().map(|i| i.token).collect::<Vec<_>>();
        use Token::*;
        assert_eq!(tokens(""), vec![EndOfString]);
        assert_eq!(tokens(","), vec![Comma, EndOfString]);
        assert_eq!(tokens("notin"), vec![NotIn, EndOfString]);
        assert_eq!(tokens("in"), vec![In, EndOfString]);
        assert_eq!(tokens("="), vec![Equals, EndOfString]);
        assert_eq!(tokens("=="), vec![DoubleEquals, EndOfString]);
        assert_eq!(tokens(">"), vec![GreaterThan, EndOfString]);
        assert_eq!(tokens("<"), vec![LessThan, EndOfString]);
        assert_eq!(tokens("!"), vec![DoesNotExist, EndOfString]);
        assert_eq!(tokens("!="), vec![NotEquals, EndOfString]);
        assert_eq!(tokens("("), vec![OpenPar, EndOfString]);
        assert_eq!(tokens(")"), vec![ClosedPar, EndOfString]);
        assert_eq!(tokens("~"), vec![Identifier, EndOfString]);
        assert_eq!(tokens("||"), vec![Identifier, EndOfString]);
        assert_eq!(
            tokens("key in ( value1, value2 )"),
            vec![
                Identifier,
                In,
                OpenPar,
                Identifier,
                Comma,
                Identifier,
                ClosedPar,
                EndOfString
            ]
        );
        assert_eq!(
            tokens("== != (), = notin"),
            vec![
                DoubleEquals,
                NotEquals,
                OpenPar,
                ClosedPar,
                Comma,
                Equals,
                NotIn,
                EndOfString
            ]
        );
        assert_eq!(
            tokens("key>2"),
            vec![Identifier, GreaterThan, Identifier, EndOfString]
        );
        // Longest match: "===" is "==" then "=", "!==" is "!=" then "=".
        assert_eq!(tokens("==="), vec![DoubleEquals, Equals, EndOfString]);
        assert_eq!(tokens("!=="), vec![NotEquals, Equals, EndOfString]);
        assert_eq!(tokens("!!="), vec![DoesNotExist, NotEquals, EndOfString]);
        assert_eq!(tokens("<="), vec![LessThan, Equals, EndOfString]);
        assert_eq!(tokens("=!"), vec![Equals, DoesNotExist, EndOfString]);
        assert_eq!(
            lex("é=ü").iter().map(|i| i.literal).collect::<Vec<_>>(),
            vec!["é", "=", "ü", ""]
        );
    }

    #[test]
    fn parse_go_int_semantics() {
        assert_eq!(parse_go_int("0"), Some(0));
        assert_eq!(parse_go_int("+7"), Some(7));
        assert_eq!(parse_go_int("-7"), Some(-7));
        assert_eq!(parse_go_int("007"), Some(7));
        assert_eq!(parse_go_int("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_go_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_go_int("9223372036854775808"), None);
        assert_eq!(parse_go_int("-9223372036854775809"), None);
        for bad in ["", "+", "-", "1_000", " 1", "1 ", "0x10", "1.0", "--1", "١"] {
            assert_eq!(parse_go_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn error_variants() {
        assert!(matches!(
            parse(",").unwrap_err(),
            SelectorError::Syntax {
                expected: "!, identifier, or 'end of string'",
                ..
            }
        ));
        assert!(matches!(
            parse("x in a").unwrap_err(),
            SelectorError::Requirement(RequirementError::ExpectedOpenParen { .. })
        ));
        assert!(matches!(
            parse("x=(").unwrap_err(),
            SelectorError::Requirement(RequirementError::Syntax { .. })
        ));
        assert!(matches!(
            parse("x=-").unwrap_err(),
            SelectorError::Requirement(RequirementError::Invalid(_))
        ));
        assert!(matches!(
            parse("a\0").unwrap_err(),
            SelectorError::NulCharacter { position: 1 }
        ));
    }

    // ----------------------------------------------------------------- proptest

    fn key_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9]",
            "[A-Za-z0-9][-A-Za-z0-9_.]{0,10}[A-Za-z0-9]",
            Just("in".to_owned()),
            Just("notin".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        (
            proptest::option::of(proptest::collection::vec(
                "[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?",
                1..4,
            )),
            key_name(),
        )
            .prop_map(|(prefix, name)| match prefix {
                Some(labels) => format!("{}/{name}", labels.join(".")),
                None => name,
            })
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[A-Za-z0-9]",
            "[A-Za-z0-9][-A-Za-z0-9_.]{0,10}[A-Za-z0-9]",
            Just("in".to_owned()),
            Just("notin".to_owned()),
        ]
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let single = (
            key(),
            value(),
            prop_oneof![
                Just(Operator::Equals),
                Just(Operator::DoubleEquals),
                Just(Operator::NotEquals)
            ],
        )
            .prop_map(|(k, v, op)| Requirement::new(k, op, [v]));
        let set = (
            key(),
            proptest::collection::vec(value(), 1..4),
            prop_oneof![Just(Operator::In), Just(Operator::NotIn)],
        )
            .prop_map(|(k, vs, op)| Requirement::new(k, op, vs));
        let unary = (
            key(),
            prop_oneof![Just(Operator::Exists), Just(Operator::DoesNotExist)],
        )
            .prop_map(|(k, op)| Requirement::new(k, op, Vec::<String>::new()));
        let cmp = (
            key(),
            "[0-9]{1,18}",
            prop_oneof![Just(Operator::GreaterThan), Just(Operator::LessThan)],
        )
            .prop_map(|(k, n, op)| Requirement::new(k, op, [n]));
        prop_oneof![single, set, unary, cmp]
            .prop_map(|r| r.expect("generated requirement is valid"))
    }

    fn selector() -> impl Strategy<Value = Selector> {
        proptest::collection::vec(requirement(), 0..6).prop_map(Selector::from_requirements)
    }

    fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(
            prop_oneof!["[a-c]", key()],
            prop_oneof![value(), "-?[0-9]{1,3}"],
            0..5,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_grammar_soup(s in "[a-z0-9=!,()<> \t./_-]{0,40}|(in|notin|[a-c]|[=!(),<>]| ){0,20}") {
            if let Ok(sel) = parse(&s) {
                // Whatever parses re-parses from its canonical form.
                let canonical = sel.to_string();
                let reparsed = parse(&canonical).expect("canonical form parses");
                prop_assert_eq!(&reparsed, &sel);
                prop_assert_eq!(reparsed.to_string(), canonical);
            }
        }

        #[test]
        fn display_round_trips(sel in selector()) {
            let text = sel.to_string();
            let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(&parsed, &sel, "{}", text);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn whitespace_is_a_delimiter(sel in selector(), ws in "[ \t\r\n]{1,3}") {
            // Spaces around commas, operators and parentheses do not change the meaning.
            let spaced = sel
                .to_string()
                .replace(',', &format!("{ws},{ws}"))
                .replace('(', &format!("{ws}({ws}"))
                .replace(')', &format!("{ws}){ws}"));
            let spaced = format!("{ws}{spaced}{ws}");
            prop_assert_eq!(parse(&spaced).map_err(|e| TestCaseError::fail(e.to_string()))?, sel);
        }

        #[test]
        fn complementary_operators(
            k in key(),
            vs in proptest::collection::vec(value(), 1..4),
            ls in label_set(),
        ) {
            let r = |op: Operator, values: Vec<String>| Requirement::new(k.clone(), op, values).expect("valid");
            // Exactly one of in / notin (and = / !=, exists / !exists) matches any label set.
            let in_ = r(Operator::In, vs.clone());
            let notin = r(Operator::NotIn, vs.clone());
            prop_assert!(in_.matches(&ls) != notin.matches(&ls));
            let eq = r(Operator::Equals, vec![vs[0].clone()]);
            let ne = r(Operator::NotEquals, vec![vs[0].clone()]);
            prop_assert!(eq.matches(&ls) != ne.matches(&ls));
            let ex = r(Operator::Exists, vec![]);
            let nex = r(Operator::DoesNotExist, vec![]);
            prop_assert!(ex.matches(&ls) != nex.matches(&ls));
            // A selector is the AND of its requirements.
            let sel = Selector::from_requirements([in_.clone(), ex.clone()]);
            prop_assert_eq!(sel.matches(&ls), in_.matches(&ls) && ex.matches(&ls));
        }

        #[test]
        fn equality_labels_agree_with_matches(sel in selector(), ls in label_set()) {
            if let Some(map) = sel.equality_labels() {
                // The map selects exactly what the selector selects.
                let all_equal = map.iter().all(|(k, v)| ls.get(k) == Some(v));
                prop_assert_eq!(all_equal, sel.matches(&ls));
                prop_assert!(sel.matches(&map));
            }
        }
    }
}
