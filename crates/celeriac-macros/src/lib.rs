//! `#[celeriac::task]`: turns a function into a celeriac task.
//!
//! The function becomes a unit struct of the same name that implements `celeriac::Task`,
//! with `new(args..) -> Signature` to build a call, `name()` for the registered name, and
//! `run(..)` — the original body — to call it directly. Use it through the `celeriac`
//! crate (`#[celeriac::task]`); the generated code names `::celeriac` paths.
//!
//! Checks made here, each with an error pointing at the offending tokens: no generics,
//! no `self`, a return type, owned argument types, simple `name: Type` parameters, and
//! known attribute options with values of the right kind.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, FnArg, ItemFn, Lit, Pat, ReturnType, Type};

/// Marks an `async fn` or plain `fn` as a task.
///
/// ```ignore
/// #[celeriac::task(name = "tasks.add")]
/// async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
///
/// #[celeriac::task(name = "tasks.resize", max_retries = 5, retry_backoff = true, acks_late = true)]
/// fn resize(ctx: &celeriac::TaskContext, path: String, width: u32) -> celeriac::TaskResult<String> { todo!() }
/// ```
///
/// Options: `name = "..."` (default `<module path>.<fn name>` with `::` as `.`),
/// `max_retries = N | None`, `default_retry_delay = secs`, `retry_backoff = true | secs`,
/// `retry_backoff_max = secs`, `retry_jitter = bool`, `autoretry = bool`,
/// `acks_late = bool`, `track_started = bool`, `ignore_result = bool`,
/// `time_limit = secs`, `soft_time_limit = secs`.
///
/// The first parameter may be `ctx: &TaskContext`; the others are the task's arguments,
/// bound from the message's `args` and `kwargs` by position and name. The function must
/// return `Result<T, E>` with `T: Serialize` and `E: Into<TaskError>` (`TaskResult<T>`).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(attr with parser);
    let func = parse_macro_input!(item as ItemFn);
    match expand(options, func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct Options {
    name: Option<syn::LitStr>,
    setters: Vec<TokenStream2>,
}

fn number(lit: &Lit) -> Option<f64> {
    match lit {
        Lit::Int(i) => i.base10_parse::<f64>().ok(),
        Lit::Float(f) => f.base10_parse::<f64>().ok(),
        _ => None,
    }
}

impl Options {
    fn parse(&mut self, meta: syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .ok_or_else(|| meta.error("expected an option name"))?;
        let value = meta.value()?;
        match key.as_str() {
            "name" => {
                let lit: syn::LitStr = value.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "task name must not be empty"));
                }
                self.name = Some(lit);
            }
            "max_retries" => {
                let expr: syn::Expr = value.parse()?;
                let setter = match &expr {
                    syn::Expr::Lit(l) => match &l.lit {
                        Lit::Int(i) => {
                            let n: u32 = i.base10_parse()?;
                            quote!(.max_retries(::core::option::Option::Some(#n)))
                        }
                        _ => return Err(syn::Error::new(expr.span(), "max_retries must be an integer or None")),
                    },
                    syn::Expr::Path(p) if p.path.is_ident("None") => quote!(.max_retries(::core::option::Option::None)),
                    _ => return Err(syn::Error::new(expr.span(), "max_retries must be an integer or None")),
                };
                self.setters.push(setter);
            }
            "retry_backoff" => {
                let lit: Lit = value.parse()?;
                let factor = match &lit {
                    Lit::Bool(b) => {
                        if b.value {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    other => number(other).ok_or_else(|| {
                        syn::Error::new(lit.span(), "retry_backoff must be true, false or a number of seconds")
                    })?,
                };
                self.setters.push(quote!(.retry_backoff(#factor)));
            }
            "default_retry_delay" | "retry_backoff_max" | "time_limit" | "soft_time_limit" => {
                let lit: Lit = value.parse()?;
                let secs = number(&lit)
                    .ok_or_else(|| syn::Error::new(lit.span(), format!("{key} must be a number of seconds")))?;
                let setter = format_ident!("{}", key);
                self.setters.push(quote!(.#setter(#secs)));
            }
            "retry_jitter" | "autoretry" | "acks_late" | "track_started" | "ignore_result" => {
                let lit: syn::LitBool = value.parse()?;
                let setter = format_ident!("{}", key);
                self.setters.push(quote!(.#setter(#lit)));
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown task option `{key}`; expected one of name, max_retries, default_retry_delay, retry_backoff, retry_backoff_max, retry_jitter, autoretry, acks_late, track_started, ignore_result, time_limit, soft_time_limit"
                )))
            }
        }
        Ok(())
    }
}

fn is_context(ty: &Type) -> bool {
    let Type::Reference(r) = ty else { return false };
    let Type::Path(p) = &*r.elem else {
        return false;
    };
    p.path
        .segments
        .last()
        .is_some_and(|s| s.ident == "TaskContext")
}

fn expand(options: Options, func: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "task functions cannot be generic",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(c.span(), "task functions cannot be const"));
    }
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new(u.span(), "task functions cannot be unsafe"));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "task functions cannot be variadic",
        ));
    }
    let ReturnType::Type(_, ret) = &sig.output else {
        return Err(syn::Error::new(
            sig.ident.span(),
            "a task must return `celeriac::TaskResult<T>` (or `Result<T, E>` with `E: Into<TaskError>`)",
        ));
    };
    let ident = &sig.ident;
    let vis = &func.vis;
    let is_async = sig.asyncness.is_some();

    let mut inputs = sig.inputs.iter().peekable();
    let mut ctx_param = None;
    if let Some(FnArg::Typed(first)) = inputs.peek() {
        if is_context(&first.ty) {
            ctx_param = Some((*first).clone());
            inputs.next();
        }
    }
    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "task functions cannot take `self`",
                ))
            }
            FnArg::Typed(pt) => {
                let Pat::Ident(pi) = &*pt.pat else {
                    return Err(syn::Error::new(
                        pt.pat.span(),
                        "task parameters must be plain names (`x: i64`)",
                    ));
                };
                if is_context(&pt.ty) {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "`&TaskContext` must be the first parameter",
                    ));
                }
                if matches!(&*pt.ty, Type::Reference(_)) {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "task arguments arrive as JSON and must be owned types (e.g. `String`, not `&str`)",
                    ));
                }
                if matches!(&*pt.ty, Type::ImplTrait(_)) {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "task arguments cannot be `impl Trait`",
                    ));
                }
                names.push(pi.ident.clone());
                types.push((*pt.ty).clone());
            }
        }
    }
    let param_names: Vec<String> = names
        .iter()
        .map(|n| n.to_string().trim_start_matches("r#").to_string())
        .collect();
    let indexes: Vec<usize> = (0..names.len()).collect();
    let rest_names: Vec<_> = names.iter().skip(1).cloned().collect();
    let rest_types: Vec<_> = types.iter().skip(1).cloned().collect();
    // `map(items)` for one-argument tasks: each item is the argument.
    let map_fn = if names.len() == 1 {
        let t = &types[0];
        quote! {
            /// One message that calls this task once per item, in order, and returns the
            /// list of results (Celery's `task.map(items)`).
            #vis fn map(items: impl ::core::iter::IntoIterator<Item = #t>) -> ::celeriac::Signature {
                ::celeriac::__private::map_signature(
                    <Self as ::celeriac::Task>::name(&#ident),
                    false,
                    items.into_iter().map(|item| ::celeriac::__private::arg(&item)).collect(),
                )
            }
        }
    } else {
        quote!()
    };

    let name_expr = match &options.name {
        Some(lit) => quote!(#lit),
        None => {
            let fname = ident.to_string();
            quote!({
                static NAME: ::std::sync::OnceLock<::std::string::String> = ::std::sync::OnceLock::new();
                ::celeriac::__private::default_name(&NAME, ::core::module_path!(), #fname)
            })
        }
    };
    let setters = &options.setters;
    let kind = if is_async {
        quote!(::celeriac::TaskKind::Async)
    } else {
        quote!(::celeriac::TaskKind::Blocking)
    };

    let docs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let other_attrs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| !a.path().is_ident("doc"))
        .collect();
    let body = &func.block;
    let asyncness = &sig.asyncness;
    let run_ctx = ctx_param.as_ref().map(|p| quote!(#p,));
    let call_ctx = ctx_param.as_ref().map(|_| quote!(&__celeriac_ctx,));
    let await_ = is_async.then(|| quote!(.await));
    let span = Span::call_site();
    let finish = quote_spanned! {ret.span()=>
        match __celeriac_out {
            ::core::result::Result::Ok(v) => ::celeriac::__private::result_value(&v),
            ::core::result::Result::Err(e) => ::core::result::Result::Err(::core::convert::Into::<::celeriac::TaskError>::into(e)),
        }
    };
    let invocation = if is_async {
        quote_spanned! {span=>
            ::celeriac::__private::Invocation::Async(::std::boxed::Box::pin(async move {
                let __celeriac_ctx = ctx;
                let _ = &__celeriac_ctx;
                let __celeriac_out = #ident::run(#call_ctx #(#names),*)#await_;
                #finish
            }))
        }
    } else {
        quote_spanned! {span=>
            ::celeriac::__private::Invocation::Blocking(::std::boxed::Box::new(move || {
                let __celeriac_ctx = ctx;
                let _ = &__celeriac_ctx;
                let __celeriac_out = #ident::run(#call_ctx #(#names),*);
                #finish
            }))
        }
    };

    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #ident;

        impl #ident {
            /// A call of this task with these arguments; send it with `.apply_async(&app)`.
            #[allow(clippy::too_many_arguments, clippy::new_ret_no_self)]
            #vis fn new(#(#names: #types),*) -> ::celeriac::Signature {
                ::celeriac::__private::signature(
                    <Self as ::celeriac::Task>::name(&#ident),
                    ::std::vec![#(::celeriac::__private::arg(&#names)),*],
                )
            }

            /// A partial call for a chain or callback: the parent's result becomes the first
            /// argument, these are the rest (Celery's `task.s(...)`).
            #[allow(clippy::too_many_arguments)]
            #vis fn s(#(#rest_names: #rest_types),*) -> ::celeriac::Signature {
                ::celeriac::__private::signature(
                    <Self as ::celeriac::Task>::name(&#ident),
                    ::std::vec![#(::celeriac::__private::arg(&#rest_names)),*],
                )
            }

            /// A call that ignores a parent's result: every argument given here
            /// (Celery's `task.si(...)`).
            #[allow(clippy::too_many_arguments)]
            #vis fn si(#(#names: #types),*) -> ::celeriac::Signature {
                Self::new(#(#names),*).set_immutable(true)
            }

            /// One message that calls this task once per argument tuple, in order, and
            /// returns the list of results (Celery's `task.starmap(items)`).
            #vis fn starmap(items: impl ::core::iter::IntoIterator<Item = (#(#types,)*)>) -> ::celeriac::Signature {
                ::celeriac::__private::map_signature(
                    <Self as ::celeriac::Task>::name(&#ident),
                    true,
                    items.into_iter().map(|(#(#names,)*)| ::celeriac::__private::tuple(::std::vec![#(::celeriac::__private::arg(&#names)),*])).collect(),
                )
            }

            /// Argument tuples split into messages of `size` calls each, sent as a group;
            /// a chord body receives the list of each message's list of results (Celery's
            /// `task.chunks(items, n)`).
            #vis fn chunks(items: impl ::core::iter::IntoIterator<Item = (#(#types,)*)>, size: usize) -> ::celeriac::Group {
                ::celeriac::__private::chunks_group(
                    <Self as ::celeriac::Task>::name(&#ident),
                    items.into_iter().map(|(#(#names,)*)| ::celeriac::__private::tuple(::std::vec![#(::celeriac::__private::arg(&#names)),*])).collect(),
                    size,
                )
            }

            #map_fn

            /// The name this task is registered under.
            #vis fn name() -> &'static str {
                <Self as ::celeriac::Task>::name(&#ident)
            }

            /// The task's body, callable directly (for example in unit tests).
            #(#other_attrs)*
            #[allow(clippy::too_many_arguments)]
            #vis #asyncness fn run(#run_ctx #(#names: #types),*) -> #ret #body
        }

        impl ::celeriac::TypedTask for #ident {
            type Args = (#(#types,)*);
            type Output = <#ret as ::celeriac::__private::TaskReturn>::Ok;
        }

        impl ::celeriac::Task for #ident {
            fn name(&self) -> &'static str {
                #name_expr
            }

            fn kind(&self) -> ::celeriac::TaskKind {
                #kind
            }

            fn config(&self) -> ::celeriac::TaskConfig {
                ::celeriac::TaskConfig::default() #(#setters)*
            }

            fn invoke(
                &self,
                ctx: ::celeriac::TaskContext,
                args: ::std::vec::Vec<::celeriac::__private::Value>,
                kwargs: ::celeriac::__private::Map<::std::string::String, ::celeriac::__private::Value>,
            ) -> ::celeriac::__private::Invocation {
                let __celeriac_bound = (|| -> ::core::result::Result<(#(#types,)*), ::celeriac::TaskError> {
                    #[allow(unused_mut)]
                    let mut __a = ::celeriac::__private::Arguments::new(
                        <Self as ::celeriac::Task>::name(self),
                        &[#(#param_names),*],
                        args,
                        kwargs,
                    )?;
                    let __v = (#(__a.take::<#types>(#indexes)?,)*);
                    __a.finish()?;
                    ::core::result::Result::Ok(__v)
                })();
                #[allow(unused_parens)]
                let (#(#names,)*) = match __celeriac_bound {
                    ::core::result::Result::Ok(v) => v,
                    ::core::result::Result::Err(e) => {
                        return ::celeriac::__private::Invocation::Ready(::core::result::Result::Err(e))
                    }
                };
                #invocation
            }
        }
    })
}
