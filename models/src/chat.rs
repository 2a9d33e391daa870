//! Chat templates: the model's own Jinja template, rendered with minijinja.
//!
//! Hugging Face renders `chat_template` with `trim_blocks` and `lstrip_blocks` on, passes
//! `messages` (a list of `{role, content}` maps), `add_generation_prompt`, `bos_token`
//! and `eos_token`, and offers `raise_exception`. This module does the same, so the
//! rendered prompt is byte for byte what the model was trained on.
//!
//! Message content is data, never template code: it is passed as a value, so a user's
//! `{{ ... }}` is rendered literally.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

/// Name under which the template is registered in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Bound on template execution steps, so a hostile template cannot loop for ever.
const TEMPLATE_FUEL: u64 = 10_000_000;

/// A template that does not compile or does not render.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The template source is not valid Jinja.
    #[error("chat template does not compile: {0}")]
    Compile(#[source] Error),
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("chat template does not render: {0}")]
    Render(#[source] Error),
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or another role the template knows.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    fn to_value(&self) -> Value {
        minijinja::context! {
            role => self.role.as_str(),
            content => self.content.as_str(),
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` with Hugging Face's settings; `bos_token` and `eos_token` are
    /// the texts of those special tokens, which some templates print.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(ChatError::Compile)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatError::Compile)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders a conversation; with `add_generation_prompt` the result ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatError::Render)?;
        let context = minijinja::context! {
            messages => Value::from_iter(messages.iter().map(ChatMessage::to_value)),
            add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template.render(context).map_err(ChatError::Render)
    }
}

/// `raise_exception(message)`: how Hugging Face templates refuse a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF carries it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn smollm2() -> ChatTemplate {
        ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap()
    }

    #[test]
    fn renders_the_fixture_prompt_with_the_default_system_prompt() {
        let got = smollm2()
            .render(&[ChatMessage::user("What is the capital of France?")], true)
            .unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn own_system_prompt_replaces_the_default_and_no_generation_prompt() {
        let got = smollm2()
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::user("Hi"),
                    ChatMessage::new("assistant", "Hello."),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        );
    }

    #[test]
    fn content_is_data_not_template_code() {
        let got = smollm2()
            .render(
                &[ChatMessage::user("{{ 7 * 7 }} {% if true %}x{% endif %}")],
                false,
            )
            .unwrap();
        assert!(
            got.contains("{{ 7 * 7 }} {% if true %}x{% endif %}"),
            "{got}"
        );
    }

    #[test]
    fn hugging_face_whitespace_rules_and_special_tokens() {
        let source = "{{ bos_token }}\n{% for m in messages %}\n  {{ m.content }}\n{% endfor %}\n{{ eos_token }}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        // trim_blocks drops the newline after a block tag; lstrip_blocks the indent
        // before one.
        assert_eq!(
            t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
                .unwrap(),
            "<s>\n  a\n  b\n</s>"
        );
    }

    #[test]
    fn bad_templates_fail_with_the_reason() {
        let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(matches!(err, ChatError::Compile(_)), "{err}");
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
        let t = ChatTemplate::new(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(
            t.render(&[], true).is_err(),
            "fuel bounds a runaway template"
        );
    }
}
