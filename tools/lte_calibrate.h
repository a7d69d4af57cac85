/* lte_calibrate.h - `slimserve lte-calibrate`: an LTE file (DESIGN.md
 * sections 4, 5) from any dense model; the method is described at the top of
 * tools/lte_calibrate.c and in README "LTE sparse FFNs".
 *
 * Threading: runs on the calling thread (the backend parallelises inside).
 */
#ifndef SS_LTE_CALIBRATE_H
#define SS_LTE_CALIBRATE_H

/* CLI: argv[0] = "lte-calibrate". Returns a process exit status (0 ok, 1
 * error, 2 usage); progress and errors on stderr. */
int tool_lte_calibrate_main(int argc, char **argv);

#endif
