"""``deepmorph`` subcommands: one module each, with ``add_arguments(parser)`` and ``run(args)``."""


def add_head_fit_arguments(parser) -> None:
    """Options of the head circle fit shared by ``fit`` and ``evaluate``."""
    parser.add_argument("--no-edge-snap", action="store_true",
                        help="head: keep the network's circle; by default it is moved onto the head's edge in the "
                             "image when that edge is clear")
    parser.add_argument("--refine-model", default=None, metavar="MODEL",
                        help="head: refinement (ROI) network applied around the first circle (default: the shipped "
                             "one when present; 'none' = off)")
    parser.add_argument("--circle-method", default="algebraic", choices=("algebraic", "geometric", "robust"),
                        help="head: circle fit (default algebraic, as in the paper; robust: RANSAC + outlier "
                             "rejection, for partly hidden outlines)")


def add_femur_fit_arguments(parser) -> None:
    """Options of the femur PDM fit shared by ``fit`` and ``evaluate``."""
    parser.add_argument("--head-anchor", default=None, metavar="MODEL",
                        help="femur: head network whose (edge-snapped) circle anchors extra PDM starts when the first "
                             "fit is not convincing (default: the shipped head network; 'none' = off)")
    parser.add_argument("--region-model", default=None, metavar="MODEL",
                        help="femur: region network whose fit is the last second opinion, polished onto the outline "
                             "network's ridge (default: the shipped one when present; 'none' = off)")
    parser.add_argument("--second-opinion-below", type=float, default=0.7, metavar="Q",
                        help="femur: try the second-opinion fits (shape-constrained CPD, head-anchored starts, the "
                             "region network) when "
                             "the first fit's mean confidence is below Q (default 0.7; 0 = never)")
