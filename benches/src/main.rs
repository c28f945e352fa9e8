//! The `rampart-bench` command: parses the options, runs the workload, prints the report and
//! writes the JSON and plots asked for; or runs a subcommand (`plot-sweep`).

use anyhow::Context;
use clap::Parser;
use rampart_bench::options::{Cli, Command};
use rampart_bench::{plot, sweep};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PlotSweep(args)) = &cli.command {
        let path = sweep::write_sweep_plot(&args.summary, &args.out)?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    let config = cli.run.validate()?;
    println!(
        "rampart-bench {} against {}: seed {} (replay with --seed {})",
        config.workload.name(),
        config.endpoints.join(","),
        config.seed,
        config.seed
    );
    let report = rampart_bench::run(&config)
        .await
        .context("the run could not complete")?;
    print!("{report}");
    if let Some(path) = &config.json_out {
        report.write_json(path)?;
        println!("wrote {}", path.display());
    }
    if let Some(dir) = &config.plot_dir {
        for path in plot::write_plots(&report, dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
