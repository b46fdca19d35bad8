//! The `chimaera` command: inspect the modules linked into this build.
//!
//! `chimaera modules` lists every linked chimod with its method table, as generated from
//! its checked manifest. Serving clients from a separate process arrives with the
//! shared-memory transport.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("modules") => {
            let mut infos = vec![<chimaera::admin::Admin as chimaera::ChiMod>::info()];
            #[cfg(feature = "mod_name")]
            infos.push(<chimaera::mod_name::ModName as chimaera::ChiMod>::info());
            for info in infos {
                println!("{} ({} {})", info.name, info.namespace, info.version);
                for method in info.methods {
                    println!(
                        "  {:>3}  {:<20} fn {}",
                        method.id, method.name, method.function
                    );
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: chimaera modules    list the linked chimods and their methods");
            ExitCode::from(2)
        }
    }
}
