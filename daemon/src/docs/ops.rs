//! The operations a client applies to a document, and how they map onto automerge.
//!
//! A path names a place in the document: segments separated by `/` (a leading `/` is
//! optional), map keys as text, list and text positions as numbers; `~1` stands for `/`
//! and `~0` for `~` inside a key (as in JSON Pointer, RFC 6901). `""` is the root.
//!
//! JSON values become automerge values: objects → maps, arrays → lists, strings →
//! string scalars (use `text` for a collaboratively editable text), numbers → int, uint
//! or float, booleans, null. `counter` creates a counter that `increment` changes;
//! concurrent increments add up.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, Value};

/// One operation (the API type, in `murmur-client`).
pub use murmur_client::api::Op;

/// Why an operation cannot be applied. All are the client's fault (4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The path does not parse or is empty where a place is needed.
    #[error("bad path {path:?}: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Nothing at the path (or at one of its parents).
    #[error("nothing at {0:?}")]
    NotFound(String),
    /// Something of another type at the path.
    #[error("{path:?} is {found}, not {expected}")]
    WrongType {
        /// The path.
        path: String,
        /// What the operation needs.
        expected: &'static str,
        /// What is there.
        found: String,
    },
    /// A list or text position past the end.
    #[error("index {index} is out of range at {path:?} (length {len})")]
    OutOfRange {
        /// The path.
        path: String,
        /// The index.
        index: usize,
        /// The length.
        len: usize,
    },
    /// A value automerge cannot hold (e.g. a number out of range).
    #[error("bad value at {path:?}: {why}")]
    BadValue {
        /// The path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// No operations.
    #[error("a change needs at least one operation")]
    Empty,
    /// Reading the document made automerge panic (a change left it inconsistent).
    #[error("the document cannot be read: {0}")]
    Unreadable(String),
}

/// Splits a path into its segments (unescaped).
pub fn segments(path: &str) -> Vec<String> {
    let p = path.strip_prefix('/').unwrap_or(path);
    if p.is_empty() {
        return Vec::new();
    }
    p.split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn kind(v: &Value<'_>) -> String {
    match v {
        Value::Object(ObjType::Map) => "a map".into(),
        Value::Object(ObjType::Table) => "a table".into(),
        Value::Object(ObjType::List) => "a list".into(),
        Value::Object(ObjType::Text) => "a text".into(),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Counter(_) => "a counter".into(),
            ScalarValue::Str(_) => "a string".into(),
            ScalarValue::Null => "null".into(),
            ScalarValue::Boolean(_) => "a boolean".into(),
            _ => "a number or other scalar".into(),
        },
    }
}

/// A resolved place: the containing object, its type, and the key or index in it.
struct Place {
    obj: ObjId,
    obj_type: ObjType,
    prop: Prop,
}

fn prop_in(obj_type: ObjType, seg: &str, path: &str) -> Result<Prop, OpError> {
    match obj_type {
        ObjType::Map | ObjType::Table => Ok(Prop::Map(seg.to_owned())),
        ObjType::List | ObjType::Text => {
            seg.parse::<usize>()
                .map(Prop::Seq)
                .map_err(|_| OpError::BadPath {
                    path: path.to_owned(),
                    why: format!("{seg:?} is not a list position"),
                })
        }
    }
}

/// Walks to the object at `segs` (every segment must name an object).
fn object_at<D: ReadDoc>(
    doc: &D,
    segs: &[String],
    path: &str,
) -> Result<(ObjId, ObjType), OpError> {
    let mut obj = ROOT;
    let mut obj_type = ObjType::Map;
    for seg in segs {
        let prop = prop_in(obj_type, seg, path)?;
        match doc.get(&obj, prop) {
            Ok(Some((Value::Object(t), id))) => {
                obj = id;
                obj_type = t;
            }
            Ok(Some((v, _))) => {
                return Err(OpError::WrongType {
                    path: path.to_owned(),
                    expected: "a map or list on the way",
                    found: kind(&v),
                });
            }
            Ok(None) | Err(_) => return Err(OpError::NotFound(path.to_owned())),
        }
    }
    Ok((obj, obj_type))
}

fn place<D: ReadDoc>(doc: &D, path: &str) -> Result<Place, OpError> {
    let segs = segments(path);
    let Some((last, parents)) = segs.split_last() else {
        return Err(OpError::BadPath {
            path: path.to_owned(),
            why: "names the root; name a key or position".into(),
        });
    };
    let (obj, obj_type) = object_at(doc, parents, path)?;
    if obj_type == ObjType::Text {
        return Err(OpError::WrongType {
            path: path.to_owned(),
            expected: "a map or list",
            found: "a text (edit it with splice)".into(),
        });
    }
    Ok(Place {
        prop: prop_in(obj_type, last, path)?,
        obj,
        obj_type,
    })
}

/// The object (list or text) at `path`, checked to be of type `want`.
fn sequence<D: ReadDoc>(doc: &D, path: &str, want: ObjType) -> Result<ObjId, OpError> {
    let (obj, t) = object_at(doc, &segments(path), path)?;
    if t != want {
        return Err(OpError::WrongType {
            path: path.to_owned(),
            expected: if want == ObjType::Text {
                "a text"
            } else {
                "a list"
            },
            found: kind(&Value::Object(t)),
        });
    }
    Ok(obj)
}

fn scalar(v: &serde_json::Value, path: &str) -> Result<Option<ScalarValue>, OpError> {
    Ok(Some(match v {
        serde_json::Value::Null => ScalarValue::Null,
        serde_json::Value::Bool(b) => ScalarValue::Boolean(*b),
        serde_json::Value::String(s) => ScalarValue::Str(s.as_str().into()),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                ScalarValue::F64(f)
            } else {
                return Err(OpError::BadValue {
                    path: path.to_owned(),
                    why: format!("number {n}"),
                });
            }
        }
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => return Ok(None),
    }))
}

/// Fills a new map or list object with the contents of a JSON object or array.
fn fill<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    v: &serde_json::Value,
    path: &str,
) -> Result<(), OpError> {
    let am = |e: automerge::AutomergeError| OpError::BadValue {
        path: path.to_owned(),
        why: e.to_string(),
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match scalar(v, path)? {
                    Some(s) => tx.put(obj, k.as_str(), s).map_err(am)?,
                    None => {
                        let child = tx.put_object(obj, k.as_str(), obj_type_of(v)).map_err(am)?;
                        fill(tx, &child, v, path)?;
                    }
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                match scalar(v, path)? {
                    Some(s) => tx.insert(obj, i, s).map_err(am)?,
                    None => {
                        let child = tx.insert_object(obj, i, obj_type_of(v)).map_err(am)?;
                        fill(tx, &child, v, path)?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn obj_type_of(v: &serde_json::Value) -> ObjType {
    if v.is_array() {
        ObjType::List
    } else {
        ObjType::Map
    }
}

/// Writes `value` at a place: a map key, or a list position (replaced, or appended at
/// the length). `insert` forces insertion into a list.
fn write<T: Transactable>(
    tx: &mut T,
    p: &Place,
    value: &serde_json::Value,
    insert: bool,
    path: &str,
) -> Result<(), OpError> {
    let am = |e: automerge::AutomergeError| OpError::BadValue {
        path: path.to_owned(),
        why: e.to_string(),
    };
    let is_list = p.obj_type == ObjType::List;
    if let Prop::Seq(i) = p.prop {
        let len = tx.length(&p.obj);
        // Insert anywhere up to the length; set replaces below it, appends at it.
        if i > len {
            return Err(OpError::OutOfRange {
                path: path.to_owned(),
                index: i,
                len,
            });
        }
        if !insert && i == len {
            return write(tx, p, value, true, path); // set at the length appends
        }
    }
    match (scalar(value, path)?, is_list && insert, &p.prop) {
        (Some(s), true, Prop::Seq(i)) => tx.insert(&p.obj, *i, s).map_err(am),
        (Some(s), _, prop) => tx.put(&p.obj, prop.clone(), s).map_err(am),
        (None, true, Prop::Seq(i)) => {
            let child = tx
                .insert_object(&p.obj, *i, obj_type_of(value))
                .map_err(am)?;
            fill(tx, &child, value, path)
        }
        (None, _, prop) => {
            let child = tx
                .put_object(&p.obj, prop.clone(), obj_type_of(value))
                .map_err(am)?;
            fill(tx, &child, value, path)
        }
    }
}

fn current<D: ReadDoc>(doc: &D, p: &Place, path: &str) -> Result<Value<'static>, OpError> {
    match doc.get(&p.obj, p.prop.clone()) {
        Ok(Some((v, _))) => Ok(v.into_owned()),
        _ => Err(OpError::NotFound(path.to_owned())),
    }
}

/// Applies one operation inside a transaction.
pub fn apply<T: Transactable>(tx: &mut T, op: &Op) -> Result<(), OpError> {
    let am = |path: &str| {
        let path = path.to_owned();
        move |e: automerge::AutomergeError| OpError::BadValue {
            path: path.clone(),
            why: e.to_string(),
        }
    };
    match op {
        Op::Set { path, value } => {
            let p = place(tx, path)?;
            write(tx, &p, value, false, path)
        }
        Op::Delete { path } => {
            let p = place(tx, path)?;
            current(tx, &p, path)?;
            tx.delete(&p.obj, p.prop).map_err(am(path))
        }
        Op::Counter { path, value } => {
            let p = place(tx, path)?;
            if let Prop::Seq(_) = p.prop {
                return Err(OpError::BadPath {
                    path: path.clone(),
                    why: "counters live at map keys".into(),
                });
            }
            tx.put(&p.obj, p.prop, ScalarValue::counter(*value))
                .map_err(am(path))
        }
        Op::Increment { path, by } => {
            let p = place(tx, path)?;
            // Reading a counter folds all its increments: try first, explain on failure.
            match tx.increment(&p.obj, p.prop.clone(), *by) {
                Ok(()) => Ok(()),
                Err(_) => {
                    let other = current(tx, &p, path)?;
                    Err(OpError::WrongType {
                        path: path.clone(),
                        expected: "a counter",
                        found: kind(&other),
                    })
                }
            }
        }
        Op::Text { path, value } => {
            let p = place(tx, path)?;
            if let Prop::Seq(i) = p.prop {
                let len = tx.length(&p.obj);
                if i > len {
                    return Err(OpError::OutOfRange {
                        path: path.clone(),
                        index: i,
                        len,
                    });
                }
            }
            let text = match (&p.prop, p.obj_type) {
                (Prop::Seq(i), ObjType::List) if *i == tx.length(&p.obj) => {
                    tx.insert_object(&p.obj, *i, ObjType::Text)
                }
                (prop, _) => tx.put_object(&p.obj, prop.clone(), ObjType::Text),
            }
            .map_err(am(path))?;
            tx.splice_text(&text, 0, 0, value).map_err(am(path))
        }
        Op::Insert { path, index, value } => {
            let list = sequence(tx, path, ObjType::List)?;
            let p = Place {
                obj: list,
                obj_type: ObjType::List,
                prop: Prop::Seq(*index),
            };
            write(tx, &p, value, true, path)
        }
        Op::Remove { path, index, count } => {
            let list = sequence(tx, path, ObjType::List)?;
            let len = tx.length(&list);
            if index.saturating_add(*count) > len || *count == 0 {
                return Err(OpError::OutOfRange {
                    path: path.clone(),
                    index: index + count.saturating_sub(1),
                    len,
                });
            }
            for _ in 0..*count {
                tx.delete(&list, *index).map_err(am(path))?;
            }
            Ok(())
        }
        Op::Splice {
            path,
            index,
            delete,
            insert,
        } => {
            let text = sequence(tx, path, ObjType::Text)?;
            let len = tx.length(&text);
            if index.saturating_add(*delete) > len {
                return Err(OpError::OutOfRange {
                    path: path.clone(),
                    index: *index + delete,
                    len,
                });
            }
            let del = isize::try_from(*delete).map_err(|_| OpError::OutOfRange {
                path: path.clone(),
                index: *delete,
                len,
            })?;
            tx.splice_text(&text, *index, del, insert).map_err(am(path))
        }
    }
}

/// The document (or the value at `path` in it) as JSON: maps → objects, lists →
/// arrays, texts → strings, counters → numbers.
///
/// automerge 0.12 can panic while reading a document that a hostile change left
/// inconsistent (found by `hostile_change_bytes_never_panic`): the read is guarded and
/// such a document is [`OpError::Unreadable`], never a crash of the caller's thread.
pub fn to_json<D: ReadDoc>(doc: &D, path: &str) -> Result<serde_json::Value, OpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        to_json_unguarded(doc, path)
    }))
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "automerge panicked".to_owned());
        Err(OpError::Unreadable(why))
    })
}

fn to_json_unguarded<D: ReadDoc>(doc: &D, path: &str) -> Result<serde_json::Value, OpError> {
    let segs = segments(path);
    if segs.is_empty() {
        return serde_json::to_value(automerge::AutoSerde::from(doc)).map_err(|e| {
            OpError::BadValue {
                path: path.to_owned(),
                why: e.to_string(),
            }
        });
    }
    let p = place(doc, path)?;
    let v = current(doc, &p, path)?;
    Ok(value_json(doc, &p, v))
}

fn value_json<D: ReadDoc>(doc: &D, p: &Place, v: Value<'_>) -> serde_json::Value {
    match v {
        Value::Scalar(s) => scalar_json(&s),
        Value::Object(_) => match doc.get(&p.obj, p.prop.clone()) {
            Ok(Some((Value::Object(t), id))) => object_json(doc, &id, t),
            _ => serde_json::Value::Null,
        },
    }
}

fn object_json<D: ReadDoc>(doc: &D, obj: &ObjId, t: ObjType) -> serde_json::Value {
    match t {
        ObjType::Text => serde_json::Value::String(doc.text(obj).unwrap_or_default()),
        ObjType::List => serde_json::Value::Array(
            (0..doc.length(obj))
                .map(|i| match doc.get(obj, i) {
                    Ok(Some((Value::Object(t), id))) => object_json(doc, &id, t),
                    Ok(Some((Value::Scalar(s), _))) => scalar_json(&s),
                    _ => serde_json::Value::Null,
                })
                .collect(),
        ),
        ObjType::Map | ObjType::Table => serde_json::Value::Object(
            doc.keys(obj)
                .map(|k| {
                    let v = match doc.get(obj, k.as_str()) {
                        Ok(Some((Value::Object(t), id))) => object_json(doc, &id, t),
                        Ok(Some((Value::Scalar(s), _))) => scalar_json(&s),
                        _ => serde_json::Value::Null,
                    };
                    (k, v)
                })
                .collect(),
        ),
    }
}

fn scalar_json(s: &ScalarValue) -> serde_json::Value {
    match s {
        ScalarValue::Str(s) => serde_json::Value::String(s.to_string()),
        ScalarValue::Int(i) => (*i).into(),
        ScalarValue::Uint(u) => (*u).into(),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        ScalarValue::Counter(c) => i64::from(c).into(),
        ScalarValue::Timestamp(t) => (*t).into(),
        ScalarValue::Boolean(b) => (*b).into(),
        ScalarValue::Null | ScalarValue::Unknown { .. } => serde_json::Value::Null,
        ScalarValue::Bytes(b) => serde_json::Value::Array(b.iter().map(|x| (*x).into()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;
    use serde_json::json;

    fn doc_with(ops: &[Op]) -> Result<Automerge, OpError> {
        let mut doc = Automerge::new();
        doc.transact::<_, _, OpError>(|tx| {
            for op in ops {
                apply(tx, op)?;
            }
            Ok(())
        })
        .map_err(|f| f.error)?;
        Ok(doc)
    }

    fn ops(v: serde_json::Value) -> Vec<Op> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_operation_does_what_it_says() {
        let doc = doc_with(&ops(json!([
            {"op": "set", "path": "config", "value": {"rate": 5, "tags": ["a", "b"], "on": true}},
            {"op": "set", "path": "/config/rate", "value": 10},
            {"op": "insert", "path": "config/tags", "index": 1, "value": "x"},
            {"op": "remove", "path": "config/tags", "index": 0},
            {"op": "set", "path": "config/tags/2", "value": "appended"},
            {"op": "counter", "path": "hits", "value": 3},
            {"op": "increment", "path": "hits", "by": 4},
            {"op": "text", "path": "note", "value": "hello world"},
            {"op": "splice", "path": "note", "index": 6, "delete": 5, "insert": "there"},
            {"op": "set", "path": "a~1b", "value": null},
            {"op": "delete", "path": "config/on"}
        ])))
        .unwrap();
        assert_eq!(
            to_json(&doc, "").unwrap(),
            json!({"config": {"rate": 10, "tags": ["x", "b", "appended"]}, "hits": 7,
                   "note": "hello there", "a/b": null})
        );
        assert_eq!(to_json(&doc, "config/tags/1").unwrap(), json!("b"));
    }

    #[test]
    fn bad_paths_and_types_are_clear_errors_and_change_nothing() {
        let base = ops(
            json!([{"op": "set", "path": "n", "value": 1}, {"op": "set", "path": "l", "value": [1]}]),
        );
        type Case = (serde_json::Value, fn(&OpError) -> bool);
        let cases: Vec<Case> = vec![
            (json!({"op": "set", "path": "", "value": 1}), |e| {
                matches!(e, OpError::BadPath { .. })
            }),
            (json!({"op": "set", "path": "missing/x", "value": 1}), |e| {
                matches!(e, OpError::NotFound(_))
            }),
            (json!({"op": "increment", "path": "n"}), |e| {
                matches!(e, OpError::WrongType { .. })
            }),
            (json!({"op": "delete", "path": "nope"}), |e| {
                matches!(e, OpError::NotFound(_))
            }),
            (
                json!({"op": "insert", "path": "l", "index": 5, "value": 1}),
                |e| matches!(e, OpError::OutOfRange { .. }),
            ),
            (
                json!({"op": "insert", "path": "n", "index": 0, "value": 1}),
                |e| matches!(e, OpError::WrongType { .. }),
            ),
            (json!({"op": "splice", "path": "l", "index": 0}), |e| {
                matches!(e, OpError::WrongType { .. })
            }),
            (json!({"op": "set", "path": "l/x", "value": 1}), |e| {
                matches!(e, OpError::BadPath { .. })
            }),
            (json!({"op": "set", "path": "n/x", "value": 1}), |e| {
                matches!(e, OpError::WrongType { .. })
            }),
        ];
        for (bad, check) in cases {
            let mut all = base.clone();
            all.push(serde_json::from_value(bad.clone()).unwrap());
            let e = doc_with(&all).unwrap_err();
            assert!(check(&e), "{bad}: {e}");
        }
        // A failed change is rolled back whole.
        let mut doc = doc_with(&base).unwrap();
        let r = doc.transact::<_, _, OpError>(|tx| {
            apply(
                tx,
                &Op::Set {
                    path: "n".into(),
                    value: json!(2),
                },
            )?;
            apply(
                tx,
                &Op::Delete {
                    path: "nope".into(),
                },
            )
        });
        assert!(r.is_err());
        assert_eq!(to_json(&doc, "n").unwrap(), json!(1));
    }
}
