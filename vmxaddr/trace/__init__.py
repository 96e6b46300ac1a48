"""Check traces of VM exits caused by VMX-family instructions (format: docs/trace-format.md).

Per exit record three verdicts:
  hardware    did the processor report what the instruction bytes imply? The recorded
              instruction-information field and exit qualification are compared with
              `exitinfo.encode` of the decoded bytes, ignoring what the SDM leaves undefined
              (undefined instruction-information bits; exit-qualification bits above the address
              size, SDM Vol. 3C §28.2.1) and accepting either answer where vmxaddr keeps an open
              question as a policy (segment of an ignored 64-bit-mode override, 16-bit SI/DI).
  hypervisor  is the recorded address or fault the reference model's answer (an
              implementation-specific case accepts either)?
  fingerprint which registered consumer models give exactly the recorded answer?
A check whose inputs are missing is "not-checkable" and names what is missing.

The reader streams: one line at a time, bounded line length, a bounded table of state records.

Modules, one per concern:
  format      keys, exit reasons, records, verdict types    parse     JSON objects -> records, state table
  hardware    the hardware verdict                          hypervisor the hypervisor verdict, fingerprint
  checker     a line through every step                     tally     running counts, summary, merging
  reader      files (gzip, zstd) -> lines -> checker        text      text output
  synth       `trace synth`                                 ftrace    `trace import --from ftrace`
  commands    the command line (check-trace, trace SUBCOMMAND; `trace record` plugs in there)
  record_bochs a trace recorded from Bochs                  record_cli `trace record --bochs|--kvm`
  chunks, schedule, handoff   checking a trace in pieces (--jobs, --dask)
  quirks      a named processor's documented departures     jsonline  one line of JSON, fast
The commands are not re-exported here: the engine package does not import the command line.
"""

from vmxaddr.trace.checker import Checker
from vmxaddr.trace.format import EXIT_KEYS, MAX_LINE, ExitRecord, Recorded, RecordError
from vmxaddr.trace.ftrace import import_ftrace
from vmxaddr.trace.hardware import check_hardware
from vmxaddr.trace.hypervisor import NamedModel, answer_matches, consumer_models
from vmxaddr.trace.parse import StateTable, parse_exit, state_from_json
from vmxaddr.trace.reader import check_stream, decompressing, iter_lines
from vmxaddr.trace.synth import synth
from vmxaddr.trace.text import summary_text, verdict_text

__all__ = ["EXIT_KEYS", "MAX_LINE", "Checker", "ExitRecord", "NamedModel", "Recorded", "RecordError", "StateTable",
           "answer_matches", "check_hardware", "check_stream", "consumer_models", "decompressing", "import_ftrace",
           "iter_lines", "parse_exit", "state_from_json", "summary_text", "synth", "verdict_text"]
