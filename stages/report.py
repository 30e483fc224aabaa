"""Stage report: one offline HTML page per experiment (reports/failure_report.html)
that a person reads top to bottom: the run's verdicts, then per class the
planted failure, the SVM, the captions, the real and decoded images, and the
fine-tuning arms (failmap.report)."""
from failmap.report import REPORT, MissingInputError, build_report, load_report_inputs, write_report
from failmap.stage import run_stage


def main():
    with run_stage("report"):
        try:
            inputs = load_report_inputs(".")
        except MissingInputError as error:
            raise SystemExit(f"report: {error}")
        path = write_report(build_report(inputs), REPORT)
        print(f"report: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
