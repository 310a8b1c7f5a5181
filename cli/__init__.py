"""The `specserve` command line: composes the commands of the rooms below it
(serve from server/engine, bench and spec-sweep from bench/, train-draft and
eval-draft from the draft-head toolkit). Nothing below imports this package
except bench/, which may use it to start servers."""
