//! The configuration reference and the example file stay true to the code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::{read, repo_path};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use learning_chat::Settings;

/// Every `section.key` the settings print, with its default.
fn keys_with_defaults() -> Vec<(String, String, toml::Value)> {
    let settings = toml::Value::try_from(Settings::default()).unwrap();
    let mut keys = Vec::new();
    for (section, table) in settings.as_table().unwrap() {
        // Lists of tables (`[[experiments]]`) have no defaults: see `experiment_keys`.
        let Some(table) = table.as_table() else {
            continue;
        };
        for (key, value) in table {
            keys.push((section.clone(), key.clone(), value.clone()));
        }
    }
    keys
}

/// Every key of an `[[experiments]]` entry and of its variants, as a full one prints them.
fn experiment_keys() -> Vec<(String, String)> {
    let figment = Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(
        "[[experiments]]\nname = 'e'\nagents = ['math']\nunit = 'learner'\n\
         start = '2026-01-01T00:00:00Z'\nend = '2027-01-01T00:00:00Z'\n\
         [[experiments.variants]]\nname = 'a'\npolicy = 'full'\nweight = 1\n\
         [[experiments.variants]]\nname = 'b'\npolicy = 'hints'\n",
    ));
    let settings = Settings::from_figment(figment).unwrap();
    let printed = toml::Value::try_from(&settings).unwrap();
    let experiment = printed["experiments"][0].as_table().unwrap().clone();
    let mut keys: Vec<(String, String)> = experiment
        .keys()
        .map(|k| ("[experiments]".to_owned(), k.clone()))
        .collect();
    for key in experiment["variants"][0].as_table().unwrap().keys() {
        keys.push(("[experiments]".to_owned(), format!("variants.{key}")));
    }
    assert!(keys.len() >= 9, "{keys:?}");
    keys
}

/// The reference's table row of `section.key`, if it has one.
fn reference_row<'a>(reference: &'a str, section: &str, name: &str) -> Option<&'a str> {
    let heading = format!("## `[{section}]`");
    let start = reference
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/configuration.md lacks the section {heading}"));
    let body = &reference[start..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
    let row = format!("| `{name}` |");
    let at = body[..end].find(&row)?;
    body[at..end].lines().next()
}

#[test]
fn every_setting_is_documented_in_the_reference() {
    let reference = read("docs/configuration.md");
    let mut keys = vec![("agents".to_owned(), "path".to_owned())];
    keys.extend(keys_with_defaults().into_iter().map(|(s, k, _)| (s, k)));
    keys.extend(experiment_keys());
    for (section, name) in keys {
        assert!(
            reference_row(&reference, &section, &name).is_some(),
            "docs/configuration.md does not document {section}.{name}"
        );
    }
}

#[test]
fn zero_is_refused_exactly_where_the_reference_says_at_least() {
    let reference = read("docs/configuration.md");
    let mut checked = 0;
    for (section, name, default) in keys_with_defaults() {
        let zero = match default {
            toml::Value::Integer(_) => "0",
            toml::Value::Float(_) => "0.0",
            _ => continue,
        };
        let key = format!("{section}.{name}");
        let row = reference_row(&reference, &section, &name).unwrap();
        let figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(&format!("[{section}]\n{name} = {zero}\n")));
        match Settings::from_figment(figment) {
            Ok(_) => assert!(
                !row.contains("At least"),
                "{key} = {zero} is accepted, but the reference says: {row}"
            ),
            Err(e) => {
                let error = e.to_string();
                assert!(
                    row.contains("At least"),
                    "{key} = {zero} is refused ({error}), but its reference row does not say \
                     \"At least\": {row}"
                );
                assert!(error.contains(&key), "the error names {key}: {error}");
            }
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} numeric keys found");
}

#[test]
fn the_example_file_is_valid_and_holds_the_defaults() {
    let path = repo_path("config/learning-chat.example.toml");
    let from_file: Settings = toml::from_str(&read("config/learning-chat.example.toml")).unwrap();
    assert_eq!(
        toml::to_string(&from_file).unwrap(),
        toml::to_string(&Settings::default()).unwrap(),
        "{} differs from the built-in defaults",
        path.display()
    );
}
