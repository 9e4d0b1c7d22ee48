//! The configuration reference and the example file stay true to the code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::{read, repo_path};
use learning_chat::Settings;

#[test]
fn every_setting_is_documented_in_the_reference() {
    let reference = read("docs/configuration.md");
    let settings = toml::Value::try_from(Settings::default()).unwrap();
    let mut keys = vec!["agents.path".to_owned()];
    for (section, table) in settings.as_table().unwrap() {
        for key in table.as_table().unwrap().keys() {
            keys.push(format!("{section}.{key}"));
        }
    }
    for key in keys {
        let (section, name) = key.split_once('.').unwrap();
        let heading = format!("## `[{section}]`");
        let start = reference
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/configuration.md lacks the section {heading}"));
        let body = &reference[start..];
        let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
        assert!(
            body[..end].contains(&format!("| `{name}` |")),
            "docs/configuration.md does not document {key}"
        );
    }
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
