// Recording what a service uses, for prewarming it elsewhere.
//
// With SPATTN_RECORD=FILE in the environment (or AttentionOptions::record), every problem
// a spattn::Attention meets for the first time — forward or backward, with the
// configuration it chose — is appended to FILE as one JSON line:
//
//   {"spattn_record":1,"pass":"forward","arch":"sm_90a","pattern":{...},"batch":1,
//    "seq":16384,"kv_seq":16384,"heads":16,"kv_heads":16,"head_dim":128,"dtype":"bf16",
//    "config":"sm90:128x128s2:longest","deterministic":false}
//
// Lines are written whole under an exclusive lock with O_APPEND, so several processes can
// record into one file; a process writes each distinct problem once, and readers merge
// duplicates. `spattn prewarm FILE` (Manifest::parse) accepts such a file and compiles
// exactly the recorded configurations. Recording never fails the call that triggers it: a
// file that cannot be written is reported once (warning) and recording stops for it.
#pragma once

#include <spattn/autotune.hpp>
#include <spattn/config.hpp>
#include <spattn/pattern.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "engine/forward.hpp"

namespace spattn::autotune {

struct RecordedProblem {
  TunePass pass = TunePass::kForward;
  std::string arch;
  Pattern pattern;
  engine::Problem problem;
  KernelConfig config;
  bool deterministic = false;  // backward only
  bool documents = false;      // forward_varlen / forward_padded (forward only): nq, nk the longest document

  std::string to_line() const;  // one JSON object, no newline; canonical (equal problems, equal lines)
};

// Parses a record file: one object per non-empty line, each strictly checked (unknown
// fields, bad values and malformed JSON are kInvalidArgument naming "<name>:<line>" and
// the field). Duplicates are merged; the order of first appearance is kept.
std::vector<RecordedProblem> parse_record(std::string_view text, const std::string& name);
// Whether `text` looks like a record file (its first line is an object with
// "spattn_record") rather than a hand-written manifest.
bool is_record(std::string_view text);

// Appends `problem` to the record file `path` unless this process already recorded it
// there. Cheap after the first call per problem (one hash lookup); thread-safe.
void record_problem(const std::string& path, const RecordedProblem& problem);

// The record file of this process: `explicit_path` if not empty, else $SPATTN_RECORD
// (read once), else "".
std::string record_path(const std::string& explicit_path);

}  // namespace spattn::autotune
