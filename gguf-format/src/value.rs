//! Metadata values: the 13 GGUF value types, compact arrays, and the ordered key-value store.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::GgufError;

/// A GGUF metadata value type id (the `u32` before every value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// Every value type, in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type for an on-disk id, `None` when it is not 0..=12.
    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(id as usize).copied()
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes of one value of a fixed-size type (`None` for strings and arrays).
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The smallest number of bytes one value of this type can occupy on disk (used to refuse
    /// counts the file cannot back before allocating).
    pub fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }

    /// Lower-case name as gguf-py spells it (`"uint32"`, `"string"`, ...).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            U32 => "uint32",
            I32 => "int32",
            F32 => "float32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "uint64",
            I64 => "int64",
            F64 => "float64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short description of the type for error messages (`"array[string] of 3"`).
    pub fn type_description(&self) -> String {
        match self {
            Value::Array(a) => format!("array[{}] of {}", a.element_type(), a.len()),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value as an `i128` when it is an integer of any width (never for bools or floats).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The string, when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, when this is an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (arrays in full; non-finite floats become strings "nan", "inf", "-inf"
    /// because JSON has no such numbers).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::U8(v) => J::from(*v),
            Value::I8(v) => J::from(*v),
            Value::U16(v) => J::from(*v),
            Value::I16(v) => J::from(*v),
            Value::U32(v) => J::from(*v),
            Value::I32(v) => J::from(*v),
            Value::U64(v) => J::from(*v),
            Value::I64(v) => J::from(*v),
            Value::F32(v) => float_json(*v as f64),
            Value::F64(v) => float_json(*v),
            Value::Bool(v) => J::from(*v),
            Value::String(s) => J::from(s.as_str()),
            Value::Array(a) => a.to_json(),
        }
    }
}

fn float_json(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| {
            serde_json::Value::String(if v.is_nan() {
                "nan".into()
            } else if v > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            })
        })
}

/// Many strings in one buffer: a 446k-entry merges list costs two allocations, not 446k.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    data: String,
    /// End offset in `data` of each string.
    ends: Vec<usize>,
}

impl StringArray {
    /// An empty array.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty array with room for `n` strings of `bytes` bytes in all.
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        StringArray {
            data: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    /// Append one string.
    pub fn push(&mut self, s: &str) {
        self.data.push_str(s);
        self.ends.push(self.data.len());
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.data.get(start..end)
    }

    /// All strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(move |i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            // Both bounds are char boundaries: each was the buffer's length after a push.
            &self.data[start..self.ends[i]]
        })
    }

    /// Total bytes of all strings.
    pub fn total_bytes(&self) -> usize {
        self.data.len()
    }
}

impl fmt::Debug for StringArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut a = StringArray::new();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

/// A metadata array: the element type and the elements, numbers kept in typed vectors.
///
/// An array of arrays holds each inner array with its own element type, as the file does.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(StringArray),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty array of the given element type.
    pub fn empty(t: ValueType) -> Array {
        match t {
            ValueType::U8 => Array::U8(Vec::new()),
            ValueType::I8 => Array::I8(Vec::new()),
            ValueType::U16 => Array::U16(Vec::new()),
            ValueType::I16 => Array::I16(Vec::new()),
            ValueType::U32 => Array::U32(Vec::new()),
            ValueType::I32 => Array::I32(Vec::new()),
            ValueType::F32 => Array::F32(Vec::new()),
            ValueType::Bool => Array::Bool(Vec::new()),
            ValueType::String => Array::String(StringArray::new()),
            ValueType::Array => Array::Array(Vec::new()),
            ValueType::U64 => Array::U64(Vec::new()),
            ValueType::I64 => Array::I64(Vec::new()),
            ValueType::F64 => Array::F64(Vec::new()),
        }
    }

    /// Element `i` as a [`Value`] (copies; for bulk access match on the variant instead).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.to_string()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// Elements as `i64` when the element type is an integer type and every element fits.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I8(v) => v.iter().map(|&x| x.into()).collect(),
            Array::U16(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I16(v) => v.iter().map(|&x| x.into()).collect(),
            Array::U32(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I32(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I64(v) => v.clone(),
            Array::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<_>>()?,
            _ => return None,
        })
    }

    /// The array as JSON, in full.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Array::U8(v) => J::from(v.clone()),
            Array::I8(v) => J::from(v.iter().map(|&x| J::from(x)).collect::<Vec<_>>()),
            Array::U16(v) => J::from(v.clone()),
            Array::I16(v) => J::from(v.clone()),
            Array::U32(v) => J::from(v.clone()),
            Array::I32(v) => J::from(v.clone()),
            Array::U64(v) => J::from(v.clone()),
            Array::I64(v) => J::from(v.clone()),
            Array::F32(v) => J::Array(v.iter().map(|&x| float_json(x as f64)).collect()),
            Array::F64(v) => J::Array(v.iter().map(|&x| float_json(x)).collect()),
            Array::Bool(v) => J::from(v.clone()),
            Array::String(v) => J::Array(v.iter().map(J::from).collect()),
            Array::Array(v) => J::Array(v.iter().map(Array::to_json).collect()),
        }
    }
}

/// One key-value pair with where it was found.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    key: String,
    value: Value,
    /// Absolute offset of the key's length field (0 for values built in memory).
    offset: u64,
}

/// The metadata of a GGUF file: key-value pairs in file order, with typed getters.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    /// File the metadata came from, for error messages.
    path: Option<Arc<Path>>,
    /// Offset of the first key-value pair (where a missing key "would be").
    section_offset: u64,
}

impl PartialEq for Metadata {
    /// Equal when the same keys hold the same values in the same order (origin ignored).
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.key == b.key && a.value == b.value)
    }
}

macro_rules! int_getter {
    ($name:ident, $t:ty) => {
        #[doc = concat!("The value of `key` as `", stringify!($t), "`: any integer type whose value fits losslessly.")]
        pub fn $name(&self, key: &str) -> Result<$t, GgufError> {
            let (v, off) = self.require(key)?;
            v.as_integer()
                .and_then(|i| <$t>::try_from(i).ok())
                .ok_or_else(|| self.wrong_type(key, off, stringify!($t), v))
        }
    };
}

macro_rules! array_getter {
    ($name:ident, $variant:ident, $t:ty) => {
        #[doc = concat!("The value of `key` as a slice of `", stringify!($t), "` (array of exactly that element type).")]
        pub fn $name(&self, key: &str) -> Result<&[$t], GgufError> {
            let (v, off) = self.require(key)?;
            match v {
                Value::Array(Array::$variant(a)) => Ok(a),
                _ => Err(self.wrong_type(key, off, concat!("array[", stringify!($t), "]"), v)),
            }
        }
    };
}

impl Metadata {
    /// An empty metadata set.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_origin(path: Option<Arc<Path>>, section_offset: u64) -> Self {
        Metadata {
            path,
            section_offset,
            ..Self::default()
        }
    }

    /// Append `key = value`, or replace the value in place (keeping its position) when the key exists.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        if let Some(&i) = self.index.get(&key) {
            self.entries[i].value = value;
        } else {
            self.index.insert(key.clone(), self.entries.len());
            self.entries.push(Entry {
                key,
                value,
                offset: 0,
            });
        }
    }

    /// Append a pair read from a file; `false` when the key is already present.
    pub(crate) fn push_from_file(&mut self, key: String, value: Value, offset: u64) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push(Entry { key, value, offset });
        true
    }

    /// Remove `key`, returning its value; later keys keep their order.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let e = self.entries.remove(i);
        for idx in self.index.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        Some(e.value)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].value)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Absolute file offset of `key`'s pair (0 for pairs built in memory).
    pub fn offset_of(&self, key: &str) -> Option<u64> {
        self.index.get(key).map(|&i| self.entries[i].offset)
    }

    /// All pairs in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|e| (e.key.as_str(), &e.value))
    }

    /// The file this metadata came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn path_buf(&self) -> PathBuf {
        self.path
            .as_deref()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn require(&self, key: &str) -> Result<(&Value, u64), GgufError> {
        match self.index.get(key) {
            Some(&i) => Ok((&self.entries[i].value, self.entries[i].offset)),
            None => Err(GgufError::MissingKey {
                path: self.path_buf(),
                offset: self.section_offset,
                key: key.to_string(),
            }),
        }
    }

    fn wrong_type(&self, key: &str, offset: u64, expected: &str, found: &Value) -> GgufError {
        let found = match found.as_integer() {
            Some(i) => format!("{} {}", found.type_description(), i),
            None => found.type_description(),
        };
        GgufError::WrongType {
            path: self.path_buf(),
            offset,
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        }
    }

    int_getter!(get_u8, u8);
    int_getter!(get_i8, i8);
    int_getter!(get_u16, u16);
    int_getter!(get_i16, i16);
    int_getter!(get_u32, u32);
    int_getter!(get_i32, i32);
    int_getter!(get_u64, u64);
    int_getter!(get_i64, i64);
    int_getter!(get_usize, usize);

    /// The value of `key` as `f32`: an `f32`, or an `f64` that converts exactly.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let (v, off) = self.require(key)?;
        match *v {
            Value::F32(x) => Ok(x),
            Value::F64(x) if (x as f32) as f64 == x || x.is_nan() => Ok(x as f32),
            _ => Err(self.wrong_type(key, off, "float32", v)),
        }
    }

    /// The value of `key` as `f64`: any `f32` or `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let (v, off) = self.require(key)?;
        match *v {
            Value::F32(x) => Ok(x as f64),
            Value::F64(x) => Ok(x),
            _ => Err(self.wrong_type(key, off, "float64", v)),
        }
    }

    /// The value of `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let (v, off) = self.require(key)?;
        match *v {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong_type(key, off, "bool", v)),
        }
    }

    /// The value of `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let (v, off) = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, off, "string", v))
    }

    /// The value of `key` as an array (any element type).
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let (v, off) = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, off, "array", v))
    }

    /// The value of `key` as the compact string array itself.
    pub fn get_string_array(&self, key: &str) -> Result<&StringArray, GgufError> {
        let (v, off) = self.require(key)?;
        match v {
            Value::Array(Array::String(a)) => Ok(a),
            _ => Err(self.wrong_type(key, off, "array[string]", v)),
        }
    }

    /// The value of `key` as a list of string slices.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        Ok(self.get_string_array(key)?.iter().collect())
    }

    /// The value of `key` as `i64`s: an array of any integer type whose elements all fit.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let (v, off) = self.require(key)?;
        v.as_array()
            .and_then(Array::to_i64_vec)
            .ok_or_else(|| self.wrong_type(key, off, "array of integers", v))
    }

    array_getter!(get_u8_array, U8, u8);
    array_getter!(get_i8_array, I8, i8);
    array_getter!(get_u16_array, U16, u16);
    array_getter!(get_i16_array, I16, i16);
    array_getter!(get_u32_array, U32, u32);
    array_getter!(get_i32_array, I32, i32);
    array_getter!(get_u64_array, U64, u64);
    array_getter!(get_i64_array, I64, i64);
    array_getter!(get_f32_array, F32, f32);
    array_getter!(get_f64_array, F64, f64);
    array_getter!(get_bool_array, Bool, bool);

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// `"{architecture}.{suffix}"`: `arch_key("block_count")` is `"gpt-oss.block_count"` in a
    /// GPT-OSS file.
    pub fn arch_key(&self, suffix: &str) -> Result<String, GgufError> {
        Ok(format!("{}.{}", self.architecture()?, suffix))
    }

    /// `general.alignment` when present and valid, else the default 32.
    pub fn alignment(&self) -> u64 {
        match self.get("general.alignment") {
            Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
            _ => crate::DEFAULT_ALIGNMENT,
        }
    }

    /// The metadata as a JSON object, keys in file order, arrays in full.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in self.iter() {
            m.insert(k.to_string(), v.to_json());
        }
        serde_json::Value::Object(m)
    }
}
