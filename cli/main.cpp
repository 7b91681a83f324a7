// spattn: the command-line front end (DESIGN.md §7, §8).
#include "cli/cli.hpp"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

namespace spattn::cli {

Globals& globals() {
  static Globals g;
  return g;
}

Pattern load_pattern_arg(const std::string& arg) {
  if (!arg.empty() && arg[0] == '@') {
    std::ifstream in(arg.substr(1));
    if (!in) throw UsageError("--pattern: cannot read file '" + arg.substr(1) + "'");
    std::stringstream text;
    text << in.rdbuf();
    return Pattern::parse(text.str());
  }
  return Pattern::parse(arg);
}

void print_json(const nlohmann::json& value) { std::cout << value.dump(2) << std::endl; }

Progress::Progress(std::string label, size_t total)
    : label_(std::move(label)), total_(total),
      enabled_(!globals().quiet && !globals().json && total > 0) {
  draw();
}

void Progress::advance(size_t n) {
  done_ += n;
  draw();
}

void Progress::draw() {
  if (!enabled_) return;
  constexpr int kWidth = 30;
  const int filled = total_ ? static_cast<int>(kWidth * done_ / total_) : kWidth;
  std::string bar(filled, '#');
  bar.resize(kWidth, ' ');
  // On a terminal the line is redrawn in place; in a log every step is its own line.
  const bool tty = isatty(fileno(stderr));
  std::fprintf(stderr, "%s%s [%s] %zu/%zu%s", tty ? "\r" : "", label_.c_str(), bar.c_str(), done_,
               total_, tty ? "" : "\n");
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && isatty(fileno(stderr))) std::fputc('\n', stderr);
}

Progress::~Progress() { finish(); }

namespace {

int exit_code_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kUnsupported: return 2;
    case ErrorCode::kNoGpu: return 3;
    default: return 1;
  }
}

// One line, no trailing newline: the message may carry an NVRTC log, which goes below it.
void report(const std::string& message) {
  std::cerr << "spattn: error: " << message << std::endl;
}

}  // namespace
}  // namespace spattn::cli

int main(int argc, char** argv) {
  using namespace spattn::cli;
  CLI::App app{"spattn: JIT sparse-attention kernel generator, kernel cache and autotuner"};
  app.require_subcommand(1);
  app.add_flag("--json", globals().json, "machine-readable JSON output on stdout");
  app.add_flag("-q,--quiet", globals().quiet, "no progress output");
  app.set_version_flag("--version", std::string("spattn ") + SPATTN_VERSION_STRING);

  register_info(app);
  register_pattern(app);
  register_cache(app);
  register_compile(app);
  register_demo(app);
  register_autotune(app);
  register_prewarm(app);
  register_bench(app);

  // Name an unknown command instead of CLI11's "A subcommand is required".
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      known |= sub->check_name(argv[1]);
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      report(std::string("unknown command '") + argv[1] + "'; commands: " + names);
      std::cerr << "run 'spattn --help' for usage" << std::endl;
      return 2;
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    report(e.what());
    std::cerr << "run 'spattn --help' for usage" << std::endl;
    return 2;
  } catch (const spattn::Error& e) {
    report(e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    report(e.what());
    return 1;
  }
  return 0;
}
