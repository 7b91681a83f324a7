// The spattn command: shared pieces of the subcommands.
//
// Every subcommand lives in its own file and registers itself on the root app through
// a register_*() function listed in main.cpp. Callbacks report failure by throwing
// spattn::Error (or UsageError for bad arguments); main() maps the error to the exit
// codes of DESIGN.md §8 and prints a one-line reason on stderr:
//   0 success, 1 runtime failure, 2 bad usage or invalid input, 3 needs a GPU.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <spattn/error.hpp>
#include <spattn/pattern.hpp>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace spattn::cli {

// Bad command-line usage that CLI11 itself cannot detect (exit code 2).
struct UsageError : Error {
  explicit UsageError(const std::string& message) : Error(ErrorCode::kInvalidArgument, message) {}
};

// Options every subcommand can read. main() gives every command and subcommand the
// flags, so `spattn --json X` and `spattn X --json` mean the same.
struct Globals {
  bool json = false;  // --json: machine-readable output on stdout
  bool quiet = false;  // -q, --quiet: no progress output
};
Globals& globals();

// Reads a --pattern argument: inline JSON, @file.json, or a preset name.
Pattern load_pattern_arg(const std::string& arg);

// Reads a file the user named (a pattern file, a manifest; "-" is standard input):
// regular files, and pipes or terminals (e.g. /dev/stdin) up to their end. Throws
// UsageError naming `what` and the file for anything else (missing, a directory, a
// socket...) and for more than `max_bytes`.
std::string read_input_file(const std::string& path, const std::string& what,
                            std::size_t max_bytes = std::size_t{64} << 20);

// Prints a JSON value on stdout (one object, pretty-printed, trailing newline).
void print_json(const nlohmann::json& value);

// A progress line on stderr ("label [#####     ] 12/50"), silent with --quiet, --json,
// or when stderr is not a terminal unless force is set.
class Progress {
 public:
  Progress(std::string label, size_t total);
  void advance(size_t n = 1);
  void finish();
  ~Progress();

 private:
  void draw();
  std::string label_;
  size_t total_;
  size_t done_ = 0;
  bool enabled_;
  bool finished_ = false;
};

// A Progress line fed by a (done, total) callback, created on the first call and
// redrawn at most ~100 times (in a log, not a terminal, every redraw is a line).
class ProgressFeed {
 public:
  explicit ProgressFeed(std::string label) : label_(std::move(label)) {}
  std::function<void(std::size_t, std::size_t)> callback() {
    return [this](std::size_t done, std::size_t total) {
      if (!bar_) bar_ = std::make_unique<Progress>(label_, total);
      const std::size_t step = std::max<std::size_t>(1, total / 100);
      if (done > done_ && (done - done_ >= step || done == total)) {
        bar_->advance(done - done_);
        done_ = done;
      }
    };
  }
  void finish() {
    if (bar_) bar_->finish();
  }

 private:
  std::string label_;
  std::unique_ptr<Progress> bar_;
  std::size_t done_ = 0;
};

// Subcommand registration (one per file).
void register_info(CLI::App& app);
void register_pattern(CLI::App& app);
void register_cache(CLI::App& app);
void register_compile(CLI::App& app);
void register_demo(CLI::App& app);
void register_autotune(CLI::App& app);
void register_prewarm(CLI::App& app);
void register_bench(CLI::App& app);
void register_bundle(CLI::App& app);
void register_ring(CLI::App& app);

}  // namespace spattn::cli
