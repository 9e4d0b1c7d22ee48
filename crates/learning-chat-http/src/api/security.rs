//! The API key scheme in the OpenAPI document, so `/docs` shows an "Authorize" button and
//! "Try it out" sends the key.

use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::OpenApi;

/// Adds both ways of sending a key (`Authorization: Bearer` and `x-api-key`) to every `/api/`
/// operation. Each also accepts no key: with `auth.mode = "off"` (the default) none is needed.
pub struct KeyAuth;

impl utoipa::Modify for KeyAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`lc_...`), required when the server runs with \
                         `auth.mode = \"required\"`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::auth::API_KEY_HEADER,
                "The same API key in a header of its own, instead of `Authorization: Bearer`",
            ))),
        );
        let either_or_none = vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::default(),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = Some(either_or_none.clone());
            }
        }
    }
}
