//! Go `text/template` for the templated settings (env, flags, ldflags, labels, the
//! envTemplate and customTemplate taggers), as Skaffold and ko evaluate them: actions with
//! pipelines, `if`/`else if`/`with`/`range`, variables, trim markers and comments, the
//! standard functions (`index`, `eq`, `printf`, `and`, …) and the most used of Sprig's, which
//! Skaffold adds (`default`, `upper`, `replace`, `trimPrefix`, …).
//!
//! The data: every name of `vars` without a dot at the top (Skaffold's `{{.FOO}}`), the same
//! under `.Env` (ko's `{{.Env.FOO}}`), `Git.*` names as ko's `.Git` map (`IsDirty` a boolean,
//! `CommitTimestamp` a number), `GoEnv.*` as `.GoEnv`, `.Timestamp` a number.
//!
//! Stricter than both where it helps: a variable that is not set is an error naming it when
//! its value would be printed or compared (ko fails on it, Skaffold printed nothing); tests
//! and functions such as `if`, `default` and `index` may still look at it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

/// Expand `input` over `vars`; an error says what is wrong and quotes the template.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    if !input.contains("{{") {
        return Ok(input.to_string());
    }
    Template::parse(input)?.expand(vars)
}

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    text: String,
    nodes: Vec<Node>,
}

impl Template {
    /// Parse `text`; an error says what is wrong and quotes it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let nodes = Parser::new(text).parse_all().map_err(|e| format!("{e} (in {text:?})"))?;
        Ok(Template { text: text.to_string(), nodes })
    }

    /// The text over the settings' variables (see the module's documentation).
    pub fn expand(&self, vars: &BTreeMap<String, String>) -> Result<String, String> {
        self.run(Value::from_vars(vars))
    }

    /// The text over `data` (a command's output, as Skaffold's `--output` templates see it).
    pub fn render(&self, data: &Data) -> Result<String, String> {
        self.run(Value::from_data(data))
    }

    fn run(&self, data: Value) -> Result<String, String> {
        let mut run = Run { scopes: vec![vec![("$".to_string(), data.clone())]], out: String::new() };
        run.nodes(&self.nodes, &data).map_err(|e| format!("{e} (used in {:?})", self.text))?;
        Ok(run.out)
    }
}

/// Data for a template as Go values: text, lists, and structs, whose fields have a name (for
/// `.Field`) and the name the `json` function writes them under (Go's `json:` tags).
#[derive(Debug, Clone)]
pub enum Data {
    Text(String),
    List(Vec<Data>),
    Struct(Vec<(String, String, Data)>),
}

/// Whether `template` reads ko's `.Git` values (git then has to run to give them).
pub fn reads_git(template: &str) -> bool {
    template.contains("{{") && (template.contains(".Git") || template.contains("\"Git\""))
}

// ---------------------------------------------------------------------------------------
// Values

#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Map(Rc<Map>),
    List(Rc<Vec<Value>>),
    Nil,
    /// A variable the data does not have, by the name the template gave it.
    Missing(String),
}

#[derive(Debug)]
struct Map {
    entries: BTreeMap<String, Value>,
    /// What `index` gives for a key it lacks: "" for maps of strings (the environment), nil
    /// for ko's `.Git` (a map of mixed values in ko).
    zero: Value,
    /// A struct's fields in order, with the names `json` writes: None for a map.
    json_fields: Option<Vec<(String, String)>>,
}

impl Value {
    fn from_vars(vars: &BTreeMap<String, String>) -> Value {
        let mut top = BTreeMap::new();
        let mut env = BTreeMap::new();
        let mut git = BTreeMap::new();
        let mut go_env = BTreeMap::new();
        for (name, value) in vars {
            if let Some(field) = name.strip_prefix("Git.") {
                let typed = match (field, value.as_str()) {
                    ("IsDirty" | "IsClean", "true") => Value::Bool(true),
                    ("IsDirty" | "IsClean", "false") => Value::Bool(false),
                    ("CommitTimestamp", n) => n.parse().map_or_else(|_| Value::Str(n.to_string()), Value::Int),
                    _ => Value::Str(value.clone()),
                };
                git.insert(field.to_string(), typed);
            } else if let Some(field) = name.strip_prefix("GoEnv.") {
                go_env.insert(field.to_string(), Value::Str(value.clone()));
            } else if !name.contains('.') {
                let typed = match name.as_str() {
                    "Timestamp" => value.parse().map_or_else(|_| Value::Str(value.clone()), Value::Int),
                    "Date" => Value::Str(value.clone()),
                    _ => {
                        env.insert(name.clone(), Value::Str(value.clone()));
                        Value::Str(value.clone())
                    }
                };
                top.insert(name.clone(), typed);
            }
        }
        let strings =
            |entries| Value::Map(Rc::new(Map { entries, zero: Value::Str(String::new()), json_fields: None }));
        top.insert("Env".into(), strings(env));
        top.insert("GoEnv".into(), strings(go_env));
        top.insert("Git".into(), Value::Map(Rc::new(Map { entries: git, zero: Value::Nil, json_fields: None })));
        strings(top)
    }

    fn from_data(data: &Data) -> Value {
        match data {
            Data::Text(text) => Value::Str(text.clone()),
            Data::List(items) => Value::List(Rc::new(items.iter().map(Value::from_data).collect())),
            Data::Struct(fields) => Value::Map(Rc::new(Map {
                entries: fields.iter().map(|(name, _, value)| (name.clone(), Value::from_data(value))).collect(),
                zero: Value::Nil,
                json_fields: Some(fields.iter().map(|(name, json, _)| (name.clone(), json.clone())).collect()),
            })),
        }
    }

    /// As Go's encoding/json writes it (without escaping HTML, as Skaffold's `json`).
    fn json(&self) -> Result<serde_json::Value, String> {
        Ok(match self {
            Value::Str(s) => serde_json::Value::from(s.as_str()),
            Value::Int(n) => serde_json::Value::from(*n),
            Value::Float(f) => serde_json::Value::from(*f),
            Value::Bool(b) => serde_json::Value::from(*b),
            Value::Nil => serde_json::Value::Null,
            Value::Missing(name) => return Err(not_set(name)),
            Value::List(items) => serde_json::Value::Array(items.iter().map(Value::json).collect::<Result<_, _>>()?),
            Value::Map(m) => {
                let mut object = serde_json::Map::new();
                match &m.json_fields {
                    Some(fields) => {
                        for (name, json) in fields {
                            object.insert(json.clone(), m.entries[name].json()?);
                        }
                    }
                    None => {
                        for (key, value) in &m.entries {
                            object.insert(key.clone(), value.json()?);
                        }
                    }
                }
                serde_json::Value::Object(object)
            }
        })
    }

    fn truth(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::Int(n) => *n != 0,
            Value::Float(f) => *f != 0.0,
            Value::Bool(b) => *b,
            Value::Map(m) => !m.entries.is_empty(),
            Value::List(items) => !items.is_empty(),
            Value::Nil | Value::Missing(_) => false,
        }
    }

    /// As Go's fmt prints it with `%v`; a missing variable cannot be printed.
    fn text(&self) -> Result<String, String> {
        Ok(match self {
            Value::Str(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Bool(b) => b.to_string(),
            Value::Nil => "<no value>".to_string(),
            Value::Missing(name) => return Err(not_set(name)),
            Value::List(items) => {
                let texts = items.iter().map(Value::text).collect::<Result<Vec<_>, _>>()?;
                format!("[{}]", texts.join(" "))
            }
            // A struct prints its fields in the order they were declared, as Go's `%v`.
            Value::Map(m) if m.json_fields.is_some() => {
                let fields = m.json_fields.iter().flatten();
                let texts = fields.map(|(name, _)| m.entries[name].text()).collect::<Result<Vec<_>, _>>()?;
                format!("{{{}}}", texts.join(" "))
            }
            Value::Map(m) => {
                let mut out = String::from("map[");
                for (i, (k, v)) in m.entries.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    let _ = write!(out, "{k}:{}", v.text()?);
                }
                out.push(']');
                out
            }
        })
    }

    /// The argument of a function that takes a string (Sprig's take any value and print it).
    fn string_arg(&self) -> Result<String, String> {
        match self {
            Value::Nil => Ok(String::new()),
            other => other.text(),
        }
    }

    fn int_arg(&self, function: &str) -> Result<i64, String> {
        match self {
            Value::Int(n) => Ok(*n),
            Value::Str(s) => s.trim().parse().map_err(|_| format!("{function}: {s:?} is not a number")),
            Value::Missing(name) => Err(not_set(name)),
            other => Err(format!("{function}: expected a number, got {}", other.kind())),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Bool(_) => "bool",
            Value::Map(m) if m.json_fields.is_some() => "struct",
            Value::Map(_) => "map",
            Value::List(_) => "slice",
            Value::Nil | Value::Missing(_) => "nil",
        }
    }
}

fn not_set(name: &str) -> String {
    format!("template variable {name:?} is not set")
}

fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        f.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipeline),
    If { pipe: Pipeline, then: Vec<Node>, otherwise: Vec<Node> },
    With { pipe: Pipeline, then: Vec<Node>, otherwise: Vec<Node> },
    Range { pipe: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
}

#[derive(Debug, Default)]
struct Pipeline {
    /// `$x := …` declares (`$k, $v := …` in range), `$x = …` assigns.
    variables: Vec<String>,
    assigns: bool,
    commands: Vec<Vec<Operand>>,
}

#[derive(Debug)]
enum Operand {
    /// `.A.B` (empty: the dot itself).
    Field(Vec<String>),
    Variable(String, Vec<String>),
    Function(String),
    Literal(Value),
    Nested(Box<Pipeline>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `.A.B` written together.
    Field(Vec<String>),
    Dot,
    /// `$x.A.B` written together.
    Variable(String, Vec<String>),
    /// `.A.B` right after a `)`.
    Chain(Vec<String>),
    Ident(String),
    Literal(LiteralToken),
    Open,
    Close,
    Pipe,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone, PartialEq)]
enum LiteralToken {
    Str(String),
    Int(i64),
    Float(f64),
}

/// Where an action ends its list: `{{end}}` or an `{{else …}}` (with what follows `else`).
enum Ending {
    End,
    Else(Vec<Token>),
    Eof,
}

const FUNCTIONS: &[&str] = &[
    // text/template's own
    "and",
    "or",
    "not",
    "len",
    "index",
    "slice",
    "print",
    "printf",
    "println",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "html",
    "js",
    "urlquery", // Sprig's, as Skaffold offers them
    "default",
    "empty",
    "coalesce",
    "ternary",
    "upper",
    "lower",
    "title",
    "trim",
    "trimAll",
    "trimPrefix",
    "trimSuffix",
    "replace",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "quote",
    "squote",
    "trunc",
    "substr",
    "repeat",
    "nospace",
    "toString",
    "env",
    "cat",
    // Skaffold's for its `--output` templates
    "json",
    "join",
];

struct Parser<'a> {
    rest: &'a str,
    /// The previous action ended with ` -}}`: the next text loses its leading white space.
    trim_next: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser { rest: input, trim_next: false }
    }

    fn parse_all(&mut self) -> Result<Vec<Node>, String> {
        let (nodes, ending) = self.list()?;
        match ending {
            Ending::Eof => Ok(nodes),
            Ending::End => Err("unexpected {{end}}".to_string()),
            Ending::Else(_) => Err("unexpected {{else}}".to_string()),
        }
    }

    /// Nodes up to the `{{end}}`/`{{else}}` that closes them, or the end of the input.
    fn list(&mut self) -> Result<(Vec<Node>, Ending), String> {
        let mut nodes = Vec::new();
        loop {
            let Some(tokens) = self.next_action(&mut nodes)? else { return Ok((nodes, Ending::Eof)) };
            let Some(first) = tokens.first() else { continue }; // a comment
            let keyword = match first {
                Token::Ident(word) => word.as_str(),
                _ => "",
            };
            let rest = tokens[1..].to_vec();
            match keyword {
                "end" if rest.is_empty() => return Ok((nodes, Ending::End)),
                "end" => return Err("{{end}} takes nothing after it".to_string()),
                "else" => return Ok((nodes, Ending::Else(rest))),
                "if" | "with" | "range" => nodes.push(self.control(keyword, rest)?),
                "define" | "template" | "block" | "break" | "continue" => {
                    return Err(format!("{{{{{keyword}}}}} is not supported in these templates"));
                }
                _ => nodes.push(Node::Print(pipeline(tokens)?)),
            }
        }
    }

    /// `if`, `with` or `range` with its pipeline, body, and else branch (`else if` / `else
    /// with` nest, as in Go).
    fn control(&mut self, keyword: &str, tokens: Vec<Token>) -> Result<Node, String> {
        if tokens.is_empty() {
            return Err(format!("missing value for {keyword}"));
        }
        let pipe = pipeline(tokens)?;
        let (then, ending) = self.list()?;
        let otherwise = match ending {
            Ending::Eof => return Err(format!("unexpected end of template: {{{{{keyword}}}}} has no {{{{end}}}}")),
            Ending::End => Vec::new(),
            Ending::Else(rest) if rest.is_empty() => match self.list()? {
                (nodes, Ending::End) => nodes,
                (_, Ending::Eof) => return Err(format!("{{{{{keyword}}}}} has no {{{{end}}}}")),
                (_, Ending::Else(_)) => return Err(format!("{{{{{keyword}}}}} has two {{{{else}}}}")),
            },
            Ending::Else(mut rest) => {
                let nested = match rest.first() {
                    Some(Token::Ident(word)) if word == "if" || word == "with" => word.clone(),
                    _ => return Err("{{else}} may be followed by if or with only".to_string()),
                };
                rest.remove(0);
                // The nested branch's {{end}} closes the outer one too.
                vec![self.control(&nested, rest)?]
            }
        };
        Ok(match keyword {
            "if" => Node::If { pipe, then, otherwise },
            "with" => Node::With { pipe, then, otherwise },
            _ => Node::Range { pipe, body: then, otherwise },
        })
    }

    /// The tokens of the next action, pushing the text before it; None at the end.
    fn next_action(&mut self, nodes: &mut Vec<Node>) -> Result<Option<Vec<Token>>, String> {
        let start = self.rest.find("{{");
        let mut text = &self.rest[..start.unwrap_or(self.rest.len())];
        if self.trim_next {
            text = text.trim_start_matches(is_space);
        }
        let Some(start) = start else {
            push_text(nodes, text);
            self.rest = "";
            return Ok(None);
        };
        let mut inside = &self.rest[start + 2..];
        if let Some(after) = inside.strip_prefix('-').filter(|a| a.starts_with(is_space)) {
            text = text.trim_end_matches(is_space);
            inside = after;
        }
        push_text(nodes, text);
        let trimmed = inside.trim_start_matches(is_space);
        if let Some(comment) = trimmed.strip_prefix("/*") {
            let end = comment.find("*/").ok_or("unclosed comment")?;
            let after = comment[end + 2..].trim_start_matches(is_space);
            let (trim, after) = match after.strip_prefix("-}}") {
                Some(rest) => (true, rest),
                None => (false, after.strip_prefix("}}").ok_or("comment ends before closing delimiter")?),
            };
            self.trim_next = trim;
            self.rest = after;
            return Ok(Some(Vec::new()));
        }
        let (tokens, trim, after) = lex_action(inside)?;
        self.trim_next = trim;
        self.rest = after;
        Ok(Some(tokens))
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn push_text(nodes: &mut Vec<Node>, text: &str) {
    if !text.is_empty() {
        nodes.push(Node::Text(text.to_string()));
    }
}

/// The tokens of one action, whether it ends with a trim marker, and the input after it.
fn lex_action(input: &str) -> Result<(Vec<Token>, bool, &str), String> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    let unclosed = || "unclosed template action: add the closing }}".to_string();
    while let Some(&(i, c)) = chars.peek() {
        let rest = &input[i..];
        if is_space(c) {
            let after = rest.trim_start_matches(is_space);
            if let Some(tail) = after.strip_prefix("-}}") {
                return Ok((tokens, true, tail));
            }
            let skip = rest.len() - after.len();
            while chars.peek().is_some_and(|&(j, _)| j < i + skip) {
                chars.next();
            }
            continue;
        }
        if let Some(tail) = rest.strip_prefix("}}") {
            return Ok((tokens, false, tail));
        }
        let (token, len) = match c {
            '(' => (Token::Open, 1),
            ')' => {
                tokens.push(Token::Close);
                let chain_len = chain_len(&rest[1..]);
                if chain_len > 0 {
                    (Token::Chain(chain(&rest[1..1 + chain_len])), 1 + chain_len)
                } else {
                    while chars.peek().is_some_and(|&(j, _)| j < i + 1) {
                        chars.next();
                    }
                    continue;
                }
            }
            '|' => (Token::Pipe, 1),
            ',' => (Token::Comma, 1),
            ':' if rest.starts_with(":=") => (Token::Declare, 2),
            '=' => (Token::Assign, 1),
            '"' => {
                let (s, len) = lex_quoted(rest)?;
                (Token::Literal(LiteralToken::Str(s)), len)
            }
            '`' => {
                let end = rest[1..].find('`').ok_or("unterminated raw string")?;
                (Token::Literal(LiteralToken::Str(rest[1..end + 1].to_string())), end + 2)
            }
            '\'' => {
                let end = rest[1..].find('\'').ok_or("unterminated character constant")?;
                let inner: Vec<char> = rest[1..end + 1].chars().collect();
                match inner.as_slice() {
                    [ch] => (Token::Literal(LiteralToken::Int(*ch as i64)), end + 2),
                    _ => return Err(format!("unsupported character constant {}", &rest[..end + 2])),
                }
            }
            '.' => {
                let len = chain_len(rest);
                if len > 0 {
                    (Token::Field(chain(&rest[..len])), len)
                } else if rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
                    let len = number_len(rest);
                    (number(&rest[..len])?, len)
                } else {
                    (Token::Dot, 1)
                }
            }
            '$' => {
                let name_len = 1 + ident_len(&rest[1..]);
                let path_len = chain_len(&rest[name_len..]);
                let path = chain(&rest[name_len..name_len + path_len]);
                (Token::Variable(rest[..name_len].to_string(), path), name_len + path_len)
            }
            '-' | '+' | '0'..='9' => {
                let len = number_len(rest);
                if len == 0 {
                    return Err(format!("unexpected {c:?} in action"));
                }
                (number(&rest[..len])?, len)
            }
            c if c.is_alphabetic() || c == '_' => {
                let len = ident_len(rest);
                (Token::Ident(rest[..len].to_string()), len)
            }
            other => return Err(format!("unexpected {other:?} in action")),
        };
        tokens.push(token);
        while chars.peek().is_some_and(|&(j, _)| j < i + len) {
            chars.next();
        }
    }
    Err(unclosed())
}

/// The length of the `.A.B…` chain at the start of `s` (0: none).
fn chain_len(s: &str) -> usize {
    let mut len = 0;
    while s[len..].starts_with('.') {
        let name = ident_len(&s[len + 1..]);
        if name == 0 || s[len + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
        len += 1 + name;
    }
    len
}

fn chain(s: &str) -> Vec<String> {
    s.split('.').skip(1).map(str::to_string).collect()
}

fn ident_len(s: &str) -> usize {
    s.char_indices().find(|&(_, c)| !(c.is_alphanumeric() || c == '_')).map_or(s.len(), |(i, _)| i)
}

fn number_len(s: &str) -> usize {
    let mut len = 0;
    for (i, c) in s.char_indices() {
        let sign_ok = i == 0 || s[..i].ends_with(['e', 'E', 'p', 'P']) && !s.starts_with("0x");
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' || (matches!(c, '+' | '-') && sign_ok) {
            len = i + c.len_utf8();
        } else {
            break;
        }
    }
    len
}

fn number(text: &str) -> Result<Token, String> {
    let bad = || format!("bad number syntax: {text:?}");
    let clean = text.replace('_', "");
    let (negative, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d.to_string()),
        None => (false, clean.trim_start_matches('+').to_string()),
    };
    let radix = |prefix: &[&str], radix| prefix.iter().find_map(|p| digits.strip_prefix(p)).map(|d| (d, radix));
    if let Some((d, r)) = radix(&["0x", "0X"], 16).or(radix(&["0o", "0O"], 8)).or(radix(&["0b", "0B"], 2)) {
        let n = i64::from_str_radix(d, r).map_err(|_| bad())?;
        return Ok(Token::Literal(LiteralToken::Int(if negative { -n } else { n })));
    }
    if let Ok(n) = clean.parse::<i64>() {
        // Go reads a leading 0 as octal.
        if digits.len() > 1 && digits.starts_with('0') {
            let n = i64::from_str_radix(&digits[1..], 8).map_err(|_| bad())?;
            return Ok(Token::Literal(LiteralToken::Int(if negative { -n } else { n })));
        }
        return Ok(Token::Literal(LiteralToken::Int(n)));
    }
    clean.parse::<f64>().map(|f| Token::Literal(LiteralToken::Float(f))).map_err(|_| bad())
}

/// A Go interpreted string literal at the start of `s`: its value and its length in `s`.
fn lex_quoted(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\n' => break,
            '\\' => {
                let (_, e) = chars.next().ok_or("unterminated quoted string")?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    'x' | 'u' | 'U' => {
                        let width = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..width).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\{e}{hex}"))?;
                        out.push(char::from_u32(code).ok_or_else(|| format!("bad escape \\{e}{hex}"))?);
                    }
                    other => return Err(format!("unknown escape sequence \\{other}")),
                }
            }
            c => out.push(c),
        }
    }
    Err("unterminated quoted string".to_string())
}

/// A pipeline from an action's tokens: `[$x[, $y] :=|=] command | command …`.
fn pipeline(mut tokens: Vec<Token>) -> Result<Pipeline, String> {
    let mut pipe = Pipeline::default();
    let declares = tokens.iter().position(|t| matches!(t, Token::Declare | Token::Assign));
    if let Some(at) = declares {
        let names: Vec<&Token> = tokens[..at].iter().filter(|t| **t != Token::Comma).collect();
        let all_variables = names.iter().all(|t| matches!(t, Token::Variable(_, path) if path.is_empty()));
        if all_variables && !names.is_empty() && names.len() <= 2 {
            pipe.variables = names
                .iter()
                .filter_map(|t| if let Token::Variable(v, _) = t { Some(v.clone()) } else { None })
                .collect();
            pipe.assigns = tokens[at] == Token::Assign;
            tokens.drain(..=at);
        }
    }
    let mut position = 0;
    pipe.commands = commands(&tokens, &mut position, false)?;
    if position != tokens.len() {
        return Err("unexpected ) in action".to_string());
    }
    Ok(pipe)
}

/// Commands separated by `|`, up to the end or (nested) a closing parenthesis.
fn commands(tokens: &[Token], at: &mut usize, nested: bool) -> Result<Vec<Vec<Operand>>, String> {
    let mut commands = vec![Vec::new()];
    while *at < tokens.len() {
        let token = &tokens[*at];
        *at += 1;
        let operand = match token {
            Token::Pipe => {
                if commands.last().is_some_and(Vec::is_empty) {
                    return Err("missing command before |".to_string());
                }
                commands.push(Vec::new());
                continue;
            }
            Token::Close if nested => break,
            Token::Close => return Err("unexpected ) in action".to_string()),
            Token::Open => {
                let inner = commands_in_parens(tokens, at)?;
                let path = match tokens.get(*at) {
                    Some(Token::Chain(path)) => {
                        *at += 1;
                        path.clone()
                    }
                    _ => Vec::new(),
                };
                Operand::Nested(Box::new(inner), path)
            }
            Token::Dot => Operand::Field(Vec::new()),
            Token::Field(path) => Operand::Field(path.clone()),
            Token::Variable(name, path) => Operand::Variable(name.clone(), path.clone()),
            Token::Chain(_) => return Err("unexpected field after a value".to_string()),
            Token::Literal(LiteralToken::Str(s)) => Operand::Literal(Value::Str(s.clone())),
            Token::Literal(LiteralToken::Int(n)) => Operand::Literal(Value::Int(*n)),
            Token::Literal(LiteralToken::Float(f)) => Operand::Literal(Value::Float(*f)),
            Token::Ident(word) => match word.as_str() {
                "true" => Operand::Literal(Value::Bool(true)),
                "false" => Operand::Literal(Value::Bool(false)),
                "nil" => Operand::Literal(Value::Nil),
                name if FUNCTIONS.contains(&name) => Operand::Function(name.to_string()),
                "cmd" | "now" | "date" | "uuidv4" | "randAlphaNum" => {
                    return Err(format!(
                        "function {word:?} is not supported: its value would change from build to build"
                    ));
                }
                other => return Err(format!("function {other:?} not defined")),
            },
            Token::Declare | Token::Assign | Token::Comma => return Err("unexpected := or = in action".to_string()),
        };
        if let Some(current) = commands.last_mut() {
            current.push(operand);
        }
    }
    if commands.last().is_some_and(Vec::is_empty) {
        return Err(if commands.len() == 1 { "missing value in action" } else { "missing command after |" }.into());
    }
    Ok(commands)
}

fn commands_in_parens(tokens: &[Token], at: &mut usize) -> Result<Pipeline, String> {
    let start = *at;
    let commands = commands(tokens, at, true)?;
    if tokens.get(*at - 1) != Some(&Token::Close) || *at == start {
        return Err("unclosed left paren".to_string());
    }
    Ok(Pipeline { commands, ..Pipeline::default() })
}

// ---------------------------------------------------------------------------------------
// Running

struct Run {
    /// Variables, innermost block last; `$` is the data.
    scopes: Vec<Vec<(String, Value)>>,
    out: String,
}

impl Run {
    fn nodes(&mut self, nodes: &[Node], dot: &Value) -> Result<(), String> {
        for node in nodes {
            // A setting ends up on go's command line: a loop writing megabytes is a mistake.
            if self.out.len() > MAX_OUTPUT {
                return Err(format!("the template's text is over {} KiB", MAX_OUTPUT / 1024));
            }
            match node {
                Node::Text(text) => self.out.push_str(text),
                Node::Print(pipe) => {
                    let value = self.pipeline(pipe, dot)?;
                    if pipe.variables.is_empty() {
                        let text = value.text()?;
                        self.out.push_str(&text);
                    }
                }
                // A variable the test declares is seen by both branches, and not after {{end}}.
                Node::If { pipe, then, otherwise } => self.in_scope(|run| {
                    let branch = if run.pipeline(pipe, dot)?.truth() { then } else { otherwise };
                    run.nodes(branch, dot)
                })?,
                Node::With { pipe, then, otherwise } => self.in_scope(|run| {
                    let value = run.pipeline(pipe, dot)?;
                    if value.truth() {
                        run.nodes(then, &value)
                    } else {
                        run.nodes(otherwise, dot)
                    }
                })?,
                Node::Range { pipe, body, otherwise } => self.range(pipe, body, otherwise, dot)?,
            }
        }
        Ok(())
    }

    fn in_scope<T>(&mut self, f: impl FnOnce(&mut Run) -> Result<T, String>) -> Result<T, String> {
        self.scopes.push(Vec::new());
        let result = f(self);
        self.scopes.pop();
        result
    }

    fn range(&mut self, pipe: &Pipeline, body: &[Node], otherwise: &[Node], dot: &Value) -> Result<(), String> {
        let items: Vec<(Value, Value)> = match self.commands_value(&pipe.commands, dot)? {
            Value::Map(m) if m.json_fields.is_some() => return Err("range can't iterate over a struct".to_string()),
            Value::Map(m) => m.entries.iter().map(|(k, v)| (Value::Str(k.clone()), v.clone())).collect(),
            Value::List(items) => items.iter().enumerate().map(|(i, v)| (Value::Int(i as i64), v.clone())).collect(),
            Value::Int(n) if pipe.variables.len() > 1 => {
                return Err(format!("can't use {n} to iterate over more than one variable"));
            }
            Value::Int(n) if n > MAX_OUTPUT as i64 => return Err(format!("range over {n}: too many iterations")),
            Value::Int(n) => (0..n.max(0)).map(|i| (Value::Int(i), Value::Int(i))).collect(),
            Value::Nil | Value::Missing(_) => Vec::new(),
            other => return Err(format!("range can't iterate over {}", other.text().unwrap_or_default())),
        };
        if items.is_empty() {
            return self.in_scope(|run| run.nodes(otherwise, dot));
        }
        for (key, element) in items {
            self.in_scope(|run| {
                match pipe.variables.as_slice() {
                    [one] => run.declare(one, element.clone()),
                    [k, v] => {
                        run.declare(k, key);
                        run.declare(v, element.clone());
                    }
                    _ => {}
                }
                run.nodes(body, &element)
            })?;
        }
        Ok(())
    }

    fn declare(&mut self, name: &str, value: Value) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((name.to_string(), value));
        }
    }

    fn variable(&self, name: &str) -> Result<Value, String> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undefined variable: {name}"))
    }

    fn pipeline(&mut self, pipe: &Pipeline, dot: &Value) -> Result<Value, String> {
        let value = self.commands_value(&pipe.commands, dot)?;
        if let Some(name) = pipe.variables.first() {
            if pipe.assigns {
                let slot = self
                    .scopes
                    .iter_mut()
                    .rev()
                    .flat_map(|scope| scope.iter_mut().rev())
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| format!("undefined variable: {name}"))?;
                slot.1 = value.clone();
            } else {
                self.declare(name, value.clone());
            }
        }
        Ok(value)
    }

    fn commands_value(&mut self, commands: &[Vec<Operand>], dot: &Value) -> Result<Value, String> {
        let mut piped: Option<Value> = None;
        for command in commands {
            piped = Some(self.command(command, dot, piped)?);
        }
        piped.ok_or_else(|| "missing value".to_string())
    }

    fn command(&mut self, command: &[Operand], dot: &Value, piped: Option<Value>) -> Result<Value, String> {
        let Some((first, args)) = command.split_first() else { return Err("empty command".to_string()) };
        if let Operand::Function(name) = first {
            return self.call(name, args, dot, piped);
        }
        if !args.is_empty() || piped.is_some() {
            return Err("can't give argument to non-function".to_string());
        }
        if matches!(first, Operand::Literal(Value::Nil)) {
            return Err("nil is not a command".to_string());
        }
        self.operand(first, dot)
    }

    fn operand(&mut self, operand: &Operand, dot: &Value) -> Result<Value, String> {
        match operand {
            Operand::Field(path) => field(dot.clone(), path, &[]),
            Operand::Variable(name, path) => {
                let value = self.variable(name)?;
                field(value, path, &[name.as_str()])
            }
            Operand::Literal(value) => Ok(value.clone()),
            Operand::Nested(pipe, path) => {
                let value = self.commands_value(&pipe.commands, dot)?;
                field(value, path, &[])
            }
            Operand::Function(name) => self.call(name, &[], dot, None),
        }
    }

    fn call(&mut self, name: &str, args: &[Operand], dot: &Value, piped: Option<Value>) -> Result<Value, String> {
        // and/or stop at the first argument that decides them, as Go's do.
        if name == "and" || name == "or" {
            let total = args.len() + usize::from(piped.is_some());
            if total == 0 {
                return Err(format!("wrong number of args for {name}: want at least 1 got 0"));
            }
            let mut last = Value::Nil;
            for operand in args {
                last = self.operand(operand, dot)?;
                if last.truth() != (name == "and") {
                    return Ok(last);
                }
            }
            return Ok(piped.unwrap_or(last));
        }
        let mut values = args.iter().map(|a| self.operand(a, dot)).collect::<Result<Vec<_>, _>>()?;
        values.extend(piped);
        call_function(name, values)
    }
}

/// `value.A.B…`; `written` is the variable the path starts from, for messages.
fn field(mut value: Value, path: &[String], written: &[&str]) -> Result<Value, String> {
    let mut walked: Vec<&str> = written.to_vec();
    for name in path {
        walked.push(name);
        value = match value {
            Value::Map(m) => match m.entries.get(name) {
                Some(v) => v.clone(),
                None if m.json_fields.is_some() => {
                    let fields: Vec<&str> = m.entries.keys().map(String::as_str).collect();
                    return Err(format!("no field {name} here: there are {}", fields.join(", ")));
                }
                None => {
                    // `.Env.FOO` and `.FOO` name the same variable.
                    let shown: Vec<&str> = walked.iter().copied().skip_while(|w| *w == "Env").collect();
                    Value::Missing(if shown.is_empty() { name.clone() } else { shown.join(".") })
                }
            },
            missing @ Value::Missing(_) => missing,
            Value::Nil => return Err(format!("nil pointer evaluating .{}", walked.join("."))),
            other => return Err(format!("can't evaluate field {name} in type {}", other.kind())),
        };
    }
    Ok(value)
}

fn arity(name: &str, values: &[Value], want: usize) -> Result<(), String> {
    if values.len() == want {
        Ok(())
    } else {
        Err(format!("wrong number of args for {name}: want {want} got {}", values.len()))
    }
}

fn call_function(name: &str, mut values: Vec<Value>) -> Result<Value, String> {
    let strings = |values: &[Value]| values.iter().map(Value::string_arg).collect::<Result<Vec<_>, _>>();
    Ok(match name {
        "not" => {
            arity(name, &values, 1)?;
            Value::Bool(!values[0].truth())
        }
        "len" => {
            arity(name, &values, 1)?;
            match &values[0] {
                Value::Str(s) => Value::Int(s.len() as i64),
                Value::Map(m) => Value::Int(m.entries.len() as i64),
                Value::List(items) => Value::Int(items.len() as i64),
                Value::Missing(n) => return Err(not_set(n)),
                other => return Err(format!("len of type {}", other.kind())),
            }
        }
        "index" => {
            let mut items = values.into_iter();
            let mut value = items.next().ok_or("wrong number of args for index: want at least 1 got 0")?;
            for key in items {
                value = match (&value, key) {
                    (Value::Map(m), Value::Str(k)) => m.entries.get(&k).cloned().unwrap_or_else(|| m.zero.clone()),
                    (Value::Map(_), other) => return Err(format!("index of map with a {} key", other.kind())),
                    (Value::Str(s), Value::Int(i)) => {
                        let byte = usize::try_from(i)
                            .ok()
                            .and_then(|i| s.as_bytes().get(i))
                            .ok_or_else(|| format!("error calling index: index out of range: {i}"))?;
                        Value::Int(i64::from(*byte))
                    }
                    (Value::List(items), Value::Int(i)) => usize::try_from(i)
                        .ok()
                        .and_then(|i| items.get(i))
                        .cloned()
                        .ok_or_else(|| format!("error calling index: index out of range: {i}"))?,
                    (Value::Missing(n), _) => return Err(not_set(n)),
                    (Value::Nil, _) => return Err("error calling index: index of untyped nil".to_string()),
                    (other, _) => return Err(format!("can't index item of type {}", other.kind())),
                };
            }
            value
        }
        "slice" => {
            let (first, bounds) = values.split_first().ok_or("wrong number of args for slice")?;
            let s = match first {
                Value::Str(s) => s,
                other => return Err(format!("can't slice item of type {}", other.kind())),
            };
            let bounds = bounds.iter().map(|b| b.int_arg(name)).collect::<Result<Vec<_>, _>>()?;
            let (from, to) = match bounds.as_slice() {
                [] => (0, s.len() as i64),
                [a] => (*a, s.len() as i64),
                [a, b] => (*a, *b),
                _ => return Err("too many slice indexes for a string".to_string()),
            };
            let range = usize::try_from(from).ok().zip(usize::try_from(to).ok()).filter(|(a, b)| a <= b);
            match range.and_then(|(a, b)| s.get(a..b)) {
                Some(part) => Value::Str(part.to_string()),
                None => return Err(format!("error calling slice: index out of range [{from}:{to}]")),
            }
        }
        "print" => Value::Str(sprint(&values)?),
        "println" => {
            let texts = values.iter().map(Value::text).collect::<Result<Vec<_>, _>>()?;
            Value::Str(texts.join(" ") + "\n")
        }
        "printf" => {
            let (format, args) = values.split_first().ok_or("wrong number of args for printf: want at least 1")?;
            Value::Str(printf(&format.string_arg()?, args)?)
        }
        "eq" => {
            let (first, others) = values.split_first().ok_or("wrong number of args for eq: want at least 1")?;
            if others.is_empty() {
                return Err("missing argument for comparison".to_string());
            }
            let mut equal = false;
            for other in others {
                equal |= compare(first, other)? == std::cmp::Ordering::Equal;
            }
            Value::Bool(equal)
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            arity(name, &values, 2)?;
            let order = compare(&values[0], &values[1])?;
            if name != "ne" && matches!(values[0], Value::Bool(_)) {
                return Err("invalid type for comparison".to_string());
            }
            Value::Bool(match name {
                "ne" => order.is_ne(),
                "lt" => order.is_lt(),
                "le" => order.is_le(),
                "gt" => order.is_gt(),
                _ => order.is_ge(),
            })
        }
        "html" => Value::Str(
            sprint(&values)?
                .chars()
                .map(|c| match c {
                    '<' => "&lt;".to_string(),
                    '>' => "&gt;".to_string(),
                    '&' => "&amp;".to_string(),
                    '"' => "&#34;".to_string(),
                    '\'' => "&#39;".to_string(),
                    c => c.to_string(),
                })
                .collect(),
        ),
        "js" => Value::Str(
            sprint(&values)?
                .chars()
                .map(|c| match c {
                    '\\' => "\\\\".to_string(),
                    '\'' => "\\'".to_string(),
                    '"' => "\\\"".to_string(),
                    '<' => "\\u003C".to_string(),
                    '>' => "\\u003E".to_string(),
                    '&' => "\\u0026".to_string(),
                    '=' => "\\u003D".to_string(),
                    c if (c as u32) < 0x20 => format!("\\u{:04X}", c as u32),
                    c => c.to_string(),
                })
                .collect(),
        ),
        "urlquery" => {
            let mut out = String::new();
            for byte in sprint(&values)?.bytes() {
                match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
                    b' ' => out.push('+'),
                    other => {
                        let _ = write!(out, "%{other:02X}");
                    }
                }
            }
            Value::Str(out)
        }
        // Sprig's, with its argument order: the value a pipeline gives comes last.
        "default" => {
            arity(name, &values, 2).or_else(|_| arity(name, &values, 1))?;
            let given = if values.len() == 2 { values.pop() } else { None };
            match given {
                Some(value) if value.truth() => value,
                _ => values.swap_remove(0),
            }
        }
        "empty" => {
            arity(name, &values, 1)?;
            Value::Bool(!values[0].truth())
        }
        "coalesce" => values.into_iter().find(Value::truth).unwrap_or(Value::Nil),
        "ternary" => {
            arity(name, &values, 3)?;
            let condition = values.pop().map(|v| v.truth()).unwrap_or_default();
            let (yes, no) = (values.swap_remove(0), values.swap_remove(0));
            if condition {
                yes
            } else {
                no
            }
        }
        "upper" | "lower" | "title" | "trim" | "nospace" | "toString" => {
            arity(name, &values, 1)?;
            let s = values[0].string_arg()?;
            Value::Str(match name {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                "title" => title(&s),
                "trim" => s.trim().to_string(),
                "nospace" => s.chars().filter(|c| !c.is_whitespace()).collect(),
                _ => s,
            })
        }
        "trimAll" | "trimPrefix" | "trimSuffix" | "contains" | "hasPrefix" | "hasSuffix" => {
            arity(name, &values, 2)?;
            let [part, s] = <[String; 2]>::try_from(strings(&values)?).map_err(|_| "two strings expected")?;
            match name {
                "trimAll" => Value::Str(s.trim_matches(|c| part.contains(c)).to_string()),
                "trimPrefix" => Value::Str(s.strip_prefix(part.as_str()).unwrap_or(&s).to_string()),
                "trimSuffix" => Value::Str(s.strip_suffix(part.as_str()).unwrap_or(&s).to_string()),
                "contains" => Value::Bool(s.contains(part.as_str())),
                "hasPrefix" => Value::Bool(s.starts_with(part.as_str())),
                _ => Value::Bool(s.ends_with(part.as_str())),
            }
        }
        "replace" => {
            arity(name, &values, 3)?;
            let [old, new, s] = <[String; 3]>::try_from(strings(&values)?).map_err(|_| "three strings expected")?;
            Value::Str(s.replace(&old, &new))
        }
        "quote" | "squote" => {
            let mark = if name == "quote" { "\"" } else { "'" };
            let quoted: Vec<String> = values
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| {
                    let s = v.string_arg()?;
                    Ok(if name == "quote" { go_quote(&s) } else { format!("{mark}{s}{mark}") })
                })
                .collect::<Result<_, String>>()?;
            Value::Str(quoted.join(" "))
        }
        "trunc" => {
            arity(name, &values, 2)?;
            let (n, s) = (values[0].int_arg(name)?, values[1].string_arg()?);
            let len = s.len() as i64;
            let cut = if n < 0 { s.get((len + n).max(0) as usize..) } else { s.get(..n.min(len) as usize) };
            Value::Str(cut.unwrap_or(&s).to_string())
        }
        "substr" => {
            arity(name, &values, 3)?;
            let (start, end, s) = (values[0].int_arg(name)?, values[1].int_arg(name)?, values[2].string_arg()?);
            // Sprig's: a negative start takes the text up to `end`, an end past it all the rest.
            let len = s.len() as i64;
            let (a, b) = if start < 0 {
                (0, end.clamp(0, len))
            } else if end < 0 || end > len {
                (start.min(len), len)
            } else {
                (start.min(len), end)
            };
            Value::Str(s.get(a as usize..b.max(a) as usize).unwrap_or_default().to_string())
        }
        "repeat" => {
            arity(name, &values, 2)?;
            let n = values[0].int_arg(name)?;
            Value::Str(values[1].string_arg()?.repeat(n.clamp(0, MAX_WIDTH as i64) as usize))
        }
        "env" => {
            arity(name, &values, 1)?;
            Value::Str(std::env::var(values[0].string_arg()?).unwrap_or_default())
        }
        "cat" => Value::Str(
            values
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(Value::string_arg)
                .collect::<Result<Vec<_>, _>>()?
                .join(" "),
        ),
        // Skaffold's for its `--output` templates.
        "json" => {
            arity(name, &values, 1)?;
            Value::Str(values[0].json()?.to_string())
        }
        "join" => {
            arity(name, &values, 2)?;
            let items = match &values[0] {
                Value::List(items) => items.iter().map(Value::string_arg).collect::<Result<Vec<_>, _>>()?,
                Value::Missing(n) => return Err(not_set(n)),
                other => return Err(format!("join: expected a list, got {}", other.kind())),
            };
            Value::Str(items.join(&values[1].string_arg()?))
        }
        other => return Err(format!("function {other:?} not defined")),
    })
}

/// Go's `fmt.Sprint`: a space between two operands when neither is a string.
fn sprint(values: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 && !matches!(value, Value::Str(_)) && !matches!(values[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&value.text()?);
    }
    Ok(out)
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        // Go's strings.Title: a word starts after anything but a letter, a digit or '_'.
        start = !(c.is_alphanumeric() || c == '_');
    }
    out
}

/// Go's `eq`/`lt` over basic values: same kinds (numbers with numbers), else an error.
fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    use Value::*;
    match (a, b) {
        (Missing(n), _) | (_, Missing(n)) => Err(not_set(n)),
        (Str(x), Str(y)) => Ok(x.cmp(y)),
        (Int(x), Int(y)) => Ok(x.cmp(y)),
        (Bool(x), Bool(y)) => Ok(x.cmp(y)),
        (Float(x), Float(y)) => x.partial_cmp(y).ok_or_else(|| "invalid comparison of NaN".to_string()),
        (Nil, Nil) => Ok(std::cmp::Ordering::Equal),
        _ => Err(format!("incompatible types for comparison: {} and {}", a.kind(), b.kind())),
    }
}

/// Go's `%q` of a string.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const MAX_WIDTH: usize = 1000;
const MAX_OUTPUT: usize = 256 * 1024;

/// Go's `fmt.Sprintf` for the verbs templates use: `%s %v %d %q %t %x %X %o %b %c %f %e %g
/// %%`, with flags `-`, `0`, `+`, a width and a precision.
fn printf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            n.parse::<usize>().ok()
        };
        // Bounded: a setting is no place for megabytes of padding.
        let width = number(&mut chars).map(|w| w.min(MAX_WIDTH));
        let precision = if chars.peek() == Some(&'.') {
            chars.next();
            Some(number(&mut chars).unwrap_or(0).min(MAX_WIDTH))
        } else {
            None
        };
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        if let Value::Missing(n) = arg {
            return Err(not_set(n));
        }
        let numeric = matches!(arg, Value::Int(_) | Value::Float(_));
        let mut text = match (verb, arg) {
            ('d', Value::Int(n)) => n.to_string(),
            ('x', Value::Int(n)) => format!("{n:x}"),
            ('X', Value::Int(n)) => format!("{n:X}"),
            ('o', Value::Int(n)) => format!("{n:o}"),
            ('b', Value::Int(n)) => format!("{n:b}"),
            ('c', Value::Int(n)) => u32::try_from(*n).ok().and_then(char::from_u32).unwrap_or('\u{fffd}').to_string(),
            ('x', Value::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', Value::Str(s)) => s.bytes().map(|b| format!("{b:02X}")).collect(),
            ('q', Value::Str(s)) => go_quote(s),
            ('f' | 'F', v @ (Value::Int(_) | Value::Float(_))) => {
                format!("{:.*}", precision.unwrap_or(6), compare_float(v))
            }
            ('e', v @ (Value::Int(_) | Value::Float(_))) => format!("{:.*e}", precision.unwrap_or(6), compare_float(v)),
            ('g', v @ (Value::Int(_) | Value::Float(_))) => format_float(compare_float(v)),
            ('s', Value::Str(s)) => match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('v', v) => v.text()?,
            ('t', Value::Bool(b)) => b.to_string(),
            (verb, v) => format!("%!{verb}({}={})", v.kind(), v.text()?),
        };
        if plus && numeric && !text.starts_with('-') {
            text.insert(0, '+');
        }
        if let Some(width) = width {
            let pad = width.saturating_sub(text.chars().count());
            if left {
                text.push_str(&" ".repeat(pad));
            } else if zero && numeric {
                let sign = usize::from(text.starts_with(['-', '+']));
                text.insert_str(sign, &"0".repeat(pad));
            } else {
                text.insert_str(0, &" ".repeat(pad));
            }
        }
        out.push_str(&text);
    }
    let extra: Vec<String> = args.map(|a| format!("{}={}", a.kind(), a.text().unwrap_or_default())).collect();
    if !extra.is_empty() {
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    Ok(out)
}

fn compare_float(v: &Value) -> f64 {
    match v {
        Value::Int(n) => *n as f64,
        Value::Float(f) => *f,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn run(template: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
        expand(template, &vars(pairs))
    }

    #[test]
    fn expands_both_spellings() {
        let vars = vars(&[("A", "1"), ("Git.ShortCommit", "abc")]);
        assert_eq!(expand("x={{.A}} y={{ .Env.A }} {{.Git.ShortCommit}}", &vars).unwrap(), "x=1 y=1 abc");
        assert!(expand("{{.B}}", &vars).unwrap_err().contains("\"B\""));
        assert!(expand("{{.Env.B}}", &vars).unwrap_err().contains("template variable \"B\" is not set"));
        assert!(expand("{{.A", &vars).is_err());
        assert!(expand("{{ printf }}", &vars).is_err());
        assert_eq!(expand("no templates {here}", &vars).unwrap(), "no templates {here}");
    }

    #[test]
    fn kyvernos_conditional_ldflags_read_as_go_reads_them() {
        // kyverno's .ko.yaml: an ldflag that is empty unless LD_FLAGS is set.
        let template = r#"{{ if index .Env "LD_FLAGS" }}{{ .Env.LD_FLAGS }}{{ end }}"#;
        assert_eq!(run(template, &[]).unwrap(), "");
        assert_eq!(run(template, &[("LD_FLAGS", "-s -w")]).unwrap(), "-s -w");
        assert_eq!(run(template, &[("LD_FLAGS", "")]).unwrap(), "");
        assert_eq!(run(r#"{{ index .Env "NOPE" }}|"#, &[]).unwrap(), "|", "ko's .Env is a map of strings");
    }

    #[test]
    fn control_flow_variables_and_trim_markers() {
        let git = [("Git.IsDirty", "true"), ("Git.ShortCommit", "abc1234"), ("Git.CommitTimestamp", "1700000000")];
        assert_eq!(run("{{.Git.ShortCommit}}{{if .Git.IsDirty}}-dirty{{end}}", &git).unwrap(), "abc1234-dirty");
        let clean = [("Git.IsDirty", "false"), ("Git.ShortCommit", "abc1234")];
        assert_eq!(run("{{.Git.ShortCommit}}{{if .Git.IsDirty}}-dirty{{end}}", &clean).unwrap(), "abc1234");
        assert_eq!(run("{{if gt .Git.CommitTimestamp 0}}dated{{end}}", &git).unwrap(), "dated");
        let template =
            "{{ if eq .MODE \"prod\" }}-s -w{{ else if eq .MODE \"debug\" }}-X main.debug=1{{ else }}none{{ end }}";
        assert_eq!(run(template, &[("MODE", "prod")]).unwrap(), "-s -w");
        assert_eq!(run(template, &[("MODE", "debug")]).unwrap(), "-X main.debug=1");
        assert_eq!(run(template, &[("MODE", "x")]).unwrap(), "none");
        assert_eq!(run("{{with .V}}v={{.}}{{else}}unset{{end}}", &[("V", "2")]).unwrap(), "v=2");
        assert_eq!(run("{{with .V}}v={{.}}{{else}}unset{{end}}", &[]).unwrap(), "unset");
        assert_eq!(run("{{$v := .V}}{{$v}}-{{$v}}", &[("V", "q")]).unwrap(), "q-q");
        assert_eq!(run("a  {{- .V -}}  b {{/* note */}}c", &[("V", "q")]).unwrap(), "aqb c");
        assert_eq!(
            run("{{range $k, $v := .Git}}{{$k}}={{$v}};{{end}}", &clean).unwrap(),
            "IsDirty=false;ShortCommit=abc1234;"
        );
        assert_eq!(run("{{-3}}", &[]).unwrap(), "-3");
        // Tests may look at a variable that is not set (ko and Go would fail on it).
        assert_eq!(run("{{if .NOPE}}x{{else}}-{{end}}{{range .Env.NOPE}}x{{else}}none{{end}}", &[]).unwrap(), "-none");
        assert!(run("{{if .V}}x", &[]).unwrap_err().contains("no {{end}}"));
        assert!(run("{{range 200000}}{{repeat 1000 \"x\"}}{{end}}", &[]).unwrap_err().contains("over 256 KiB"));
        assert!(run("{{range 100000000}}{{end}}", &[]).unwrap_err().contains("too many iterations"));
        assert!(run("{{end}}", &[]).is_err());
    }

    #[test]
    fn lists_structs_and_json_as_skaffolds_output_templates_see_them() {
        let field = |name: &str, json: &str, value: Data| (name.to_string(), json.to_string(), value);
        let build = |image: &str, tag: &str| {
            Data::Struct(vec![
                field("ImageName", "imageName", Data::Text(image.into())),
                field("Tag", "tag", Data::Text(tag.into())),
            ])
        };
        let data =
            Data::Struct(vec![field("Builds", "builds", Data::List(vec![build("a", "a:1"), build("b<&>", "b:2")]))]);
        let render = |text: &str| Template::parse(text).and_then(|t| t.render(&data));
        assert_eq!(
            render("{{json .}}").unwrap(),
            r#"{"builds":[{"imageName":"a","tag":"a:1"},{"imageName":"b<&>","tag":"b:2"}]}"#
        );
        assert_eq!(render("{{range .Builds}}{{.ImageName}} -> {{.Tag}}\n{{end}}").unwrap(), "a -> a:1\nb<&> -> b:2\n");
        assert_eq!(render("{{len .Builds}} {{(index .Builds 1).Tag}} {{index .Builds 0}}").unwrap(), "2 b:2 {a a:1}");
        assert_eq!(render("{{range $i, $b := .Builds}}{{$i}}{{end}} {{if .Builds}}some{{end}}").unwrap(), "01 some");
        let declared =
            Data::Struct(vec![field("Z", "z", Data::Text("last".into())), field("A", "a", Data::Text("first".into()))]);
        let in_order = Template::parse("{{.}} {{json .}}").and_then(|t| t.render(&declared)).unwrap();
        assert_eq!(in_order, r#"{last first} {"z":"last","a":"first"}"#, "fields in declaration order");
        assert!(render("{{.Builds.Tag}}").unwrap_err().contains("can't evaluate field Tag in type slice"));
        assert!(render("{{index .Builds 2}}").unwrap_err().contains("index out of range: 2"));
        assert!(render("{{range .}}{{end}}").unwrap_err().contains("can't iterate over a struct"));
    }

    #[test]
    fn functions_and_pipelines() {
        let v = [("VERSION", "v1.2.3"), ("NAME", "App")];
        assert_eq!(run("{{.VERSION | trimPrefix \"v\"}}", &v).unwrap(), "1.2.3");
        assert_eq!(
            run("{{ printf \"%s-%05d|%-4s|%q\" .NAME 42 \"a\" .VERSION }}", &v).unwrap(),
            "App-00042|a   |\"v1.2.3\""
        );
        assert_eq!(run("{{default \"dev\" .MISSING}} {{.UNSET | default \"x\"}}", &v).unwrap(), "dev x");
        assert_eq!(run("{{.NAME | lower | upper}} {{ replace \".\" \"_\" .VERSION }}", &v).unwrap(), "APP v1_2_3");
        assert_eq!(
            run("{{ and .NAME .VERSION }} {{ or .NOPE \"fallback\" }} {{ not .NAME }}", &v).unwrap(),
            "v1.2.3 fallback false"
        );
        assert_eq!(run("{{ len .NAME }} {{ slice .VERSION 1 4 }} {{ trunc 2 .NAME }}", &v).unwrap(), "3 1.2 Ap");
        assert_eq!(run("{{ print 1 2 \"x\" 3 }}", &v).unwrap(), "1 2x3");
        assert_eq!(run("{{ (printf \"%s\" .NAME) | quote }}", &v).unwrap(), "\"App\"");
        assert_eq!(run("{{ ternary \"yes\" \"no\" (hasPrefix \"v\" .VERSION) }}", &v).unwrap(), "yes");
        assert_eq!(
            run("{{ substr 1 3 .VERSION }} {{ substr -1 2 .VERSION }} {{ substr 2 99 .VERSION }}", &v).unwrap(),
            "1. v1 .2.3"
        );
        assert_eq!(
            run("{{ title \"hello-world foo_bar\" }} {{ trunc -3 .VERSION }}", &v).unwrap(),
            "Hello-World Foo_bar 2.3"
        );
        assert_eq!(run("{{ .Timestamp }}", &[("Timestamp", "1700000000")]).unwrap(), "1700000000");
        assert_eq!(run("{{ .GoEnv.GOVERSION }}", &[("GoEnv.GOVERSION", "go1.26.8")]).unwrap(), "go1.26.8");
        assert!(run("{{ nosuch .NAME }}", &v).unwrap_err().contains("function \"nosuch\" not defined"));
        assert!(run("{{ now }}", &v).unwrap_err().contains("change from build to build"));
        assert!(run("{{ eq .NAME 3 }}", &v).unwrap_err().contains("incompatible types"));
        assert!(run("{{ eq .UNSET \"x\" }}", &v).unwrap_err().contains("\"UNSET\" is not set"));
        assert!(run("{{ .NAME.Field }}", &v).unwrap_err().contains("can't evaluate field Field"));
        assert!(run("{{ .NAME 1 }}", &v).unwrap_err().contains("non-function"));
    }
}
