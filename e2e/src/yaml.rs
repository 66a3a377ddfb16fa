//! YAML read as JSON values, for tests that check configuration files
//! (docker-compose.yml, the monitoring deployment) by indexing into them.

use saphyr::{LoadableYamlNode as _, Scalar, Yaml};
use serde_json::{Map, Value};

/// `text`, which must be one YAML document, as JSON.
pub fn document(text: &str) -> Value {
    let documents = Yaml::load_from_str(text).unwrap_or_else(|err| panic!("not YAML: {err}"));
    assert_eq!(documents.len(), 1, "one YAML document");
    to_json(&documents[0])
}

/// YAML to JSON, resolving merge keys (`<<: *anchor`): compose honours
/// them, YAML 1.2 (and so saphyr) leaves them to the application. Explicit
/// keys win over merged ones, earlier merged mappings over later ones.
pub fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => Value::from(*i),
        Yaml::Value(Scalar::FloatingPoint(f)) => Value::from(f.into_inner()),
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Representation(s, _, _) => Value::String(s.to_string()),
        Yaml::Sequence(items) => items.iter().map(to_json).collect(),
        Yaml::Tagged(_, inner) => to_json(inner),
        Yaml::Mapping(mapping) => {
            let mut object = Map::new();
            let mut merged = Vec::new();
            for (key, value) in mapping {
                let key = match to_json(key) {
                    Value::String(key) => key,
                    other => other.to_string(),
                };
                if key == "<<" {
                    match to_json(value) {
                        Value::Array(sources) => merged.extend(sources),
                        source => merged.push(source),
                    }
                } else {
                    object.insert(key, to_json(value));
                }
            }
            for source in merged {
                let Value::Object(source) = source else {
                    panic!("merge key with a non-mapping: {source}")
                };
                for (key, value) in source {
                    object.entry(key).or_insert(value);
                }
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => panic!("unresolved YAML node {yaml:?}"),
    }
}
